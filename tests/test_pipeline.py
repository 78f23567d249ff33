"""End-to-end behaviour of the round loop: determinism, resume, run-directory safety (CLI: test_cli.py)."""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from bayes_dc.loop import pipeline
from bayes_dc.clustering import make_backend
from bayes_dc.config.schema import ClusterConfig
from bayes_dc.data import load_dataset
from bayes_dc.config.schema import Config, merge, option_used
from bayes_dc.rundir.jsonl import read_jsonl
from bayes_dc.rundir.runlog import RunDirError

TIMING = ("seconds", "share")


def comparable(records):
    """metrics.jsonl records without wall-clock fields (they legitimately differ between runs)."""
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING) and k != "backend_info"}
            for r in records]


def read(run_dir):
    return read_jsonl(run_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(config, final record, run directory) of tiny_config's k-means run with figures, run once for the tests that
    read it or try to overwrite it."""
    from conftest import make_tiny_config

    out_dir = tmp_path_factory.mktemp("tiny_run")
    cfg = merge(make_tiny_config(out_dir), {"run": {"figures": True}})
    final = pipeline.run(cfg)
    return cfg, final, out_dir / "runs" / "tiny"


def test_run_writes_run_directory(tiny_run):
    cfg, final, d = tiny_run
    assert Config.from_json(d / "config.json") == cfg
    env = json.loads((d / "environment.json").read_text())
    assert env["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0] and "git_revision" in env
    records = read(d)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["phase"] == "final" and records[-1] == final
    assert "nmi_prev" not in records[0] and all("nmi_prev" in r for r in records[1:])
    assert [r for r in records if "knn" in r][0]["epoch"] == 0
    snaps = [np.load(p) for p in sorted((d / "clusters").glob("round_*.npz"))]
    assert len(snaps) == 4
    assert snaps[0]["labels"].shape == (300,) and np.allclose(snaps[0]["resp_values"].astype(np.float32).sum(1), 1)
    assert (d / "figures" / "rounds.png").stat().st_size > 0 and (d / "figures" / "rounds.pdf").exists()

    # Each record's scores are those of its own round's snapshot, recomputed here with scikit-learn.
    classes = load_dataset("synthetic", "train", subset=300, seed=cfg.run.seed).labels
    for rec, snap in zip(records, snaps):
        assert rec["nmi"] == pytest.approx(normalized_mutual_info_score(classes, snap["labels"]), abs=1e-12)
        assert rec["ari"] == pytest.approx(adjusted_rand_score(classes, snap["labels"]), abs=1e-12)
    for rec, prev, snap in zip(records[1:], snaps, snaps[1:]):
        assert rec["nmi_prev"] == pytest.approx(normalized_mutual_info_score(prev["labels"], snap["labels"]))

    # Lineage of round t compares the snapshots of rounds t-1 and t. With k-means (hard labels) the overlap is
    # the contingency table of the two rounds' labels, so "kept" is every pair of active clusters that holds
    # the majority of both (lineage.py's rule), and the active counts are those of the two rounds' weights.
    lineage = read_jsonl(d / "lineage.jsonl")
    assert [e["round"] for e in lineage] == [1, 2, 3]
    k = cfg.cluster.k
    for event, prev, new in zip(lineage, snaps, snaps[1:]):
        table = np.zeros((k, k))
        np.add.at(table, (prev["labels"], new["labels"]), 1)
        active_prev, active_new = prev["weights"] >= 0.005, new["weights"] >= 0.005  # T = 10: the 0.5 % cut
        majority = (table >= 0.5 * table.sum(1, keepdims=True)) & (table >= 0.5 * table.sum(0, keepdims=True))
        kept = np.argwhere(majority & active_prev[:, None] & active_new[None, :])
        assert event["kept"] == kept.tolist() and event["n_kept"] == len(kept) > 0
        assert (event["n_active_prev"], event["n_active_new"]) == (active_prev.sum(), active_new.sum())


def test_same_seed_same_metrics(tiny_run, tiny_config, tmp_path):
    """tiny_config again (figures off: they change no number) equals tiny_run's records; seed 1 differs."""
    b = merge(tiny_config, {"run": {"name": "b"}})
    pipeline.run(b)
    ra, rb = read(tiny_run[2]), read(tmp_path / "runs" / "b")
    assert comparable(ra) == comparable(rb)
    c = merge(tiny_config, {"run": {"name": "c", "seed": 1}})
    pipeline.run(c)
    assert comparable(read(tmp_path / "runs" / "c")) != comparable(ra)


# full covariances need few dimensions at N = 300 (each component costs ~d^2/2 nats of prior KL)
DP_TINY = {"cluster": {"prior": "dp", "truncation": 20, "warm_start": "prior", "max_iter": 30}, "features": {"pca_dim": 6},
           "targets": {"targets": "soft", "head": "keep"}}


DP_UMAP = {"cluster": {"prior": "dp", "truncation": 20, "max_iter": 30},
           "features": {"reduce": "umap", "reduce_dim": 3, "pca_dim": 8, "umap_neighbors": 10}}


DP_PUMAP = {"cluster": {"prior": "dp", "truncation": 20, "max_iter": 30},
            "features": {"reduce": "pumap", "reduce_dim": 3, "pca_dim": 8, "umap_neighbors": 10, "pumap_hidden": 16,
                         "pumap_epochs": 2, "pumap_warm_epochs": 1}}


DP_PROJECTION = {"cluster": {"prior": "dp", "truncation": 20, "max_iter": 30},
                 "features": {"cluster_on": "projection", "reduce": "none"},
                 "model": {"projection_dim": 6, "projection_hidden": 16}, "train": {"augment": "resized-crop"}}


DP_TWO_VIEWS = {**DP_PROJECTION, "targets": {"targets": "soft"}, "train": {"augment": "resized-crop", "two_views": True}}


DP_PUMAP_TWO_VIEWS = {**DP_PUMAP, "targets": {"targets": "soft"}, "train": {"augment": "resized-crop", "two_views": True}}


@pytest.mark.parametrize("overrides", [{}, DP_TINY, DP_UMAP, DP_PROJECTION, DP_TWO_VIEWS, DP_PUMAP_TWO_VIEWS],
                         ids=["kmeans", "dp-soft-keep-warm", "dp-umap-warm", "dp-projection-resized-crop",
                              "dp-two-views", "dp-pumap-two-views"])
def test_resume_after_interruption_matches_uninterrupted_run(tiny_config, tmp_path, monkeypatch, overrides):
    cfg = merge(merge(tiny_config, {"train": {"epochs": 4, "relabel_every": 2}}), overrides)
    pipeline.run(merge(cfg, {"run": {"name": "full"}}))

    real_train_epoch = pipeline.train_epoch
    calls = {"n": 0}

    def crash_on_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_epoch", crash_on_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(merge(cfg, {"run": {"name": "broken"}}))
    assert [r["epoch"] for r in read(tmp_path / "runs" / "broken")] == [0, 1]
    monkeypatch.setattr(pipeline, "train_epoch", real_train_epoch)
    pipeline.run(merge(cfg, {"run": {"name": "broken", "resume": True}}))

    full, resumed = tmp_path / "runs" / "full", tmp_path / "runs" / "broken"
    assert comparable(read(resumed)) == comparable(read(full))
    sa = torch.load(full / "last.pt", weights_only=False)["model"]
    sb = torch.load(resumed / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_existing_run_directory_is_never_overwritten(tiny_run):
    cfg, _, d = tiny_run
    before = (d / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="--resume"):
        pipeline.run(cfg)
    with pytest.raises(RunDirError, match="cluster.k"):
        pipeline.run(merge(cfg, {"cluster": {"k": 12}, "run": {"resume": True}}))
    assert (d / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("overrides, message", [
    ({"cluster": {"prior": "gmm"}}, "choose one of"),
    ({"cluster": {"prior": "kmeans"}, "train": {"two_views": True}}, "two_views"),
    ({"targets": {"head": "keep"}}, "identities"),
    ({"cluster": {"prior": "dp"}, "train": {"two_views": True, "space_weight": 1.0}}, "reduce='pumap'"),
    ({"cluster": {"prior": "dp"}, "features": {"reduce": "pumap"}, "train": {"space_weight": float("nan")}},
     "space_weight"),
    ({"targets": {"targets": "soft"}}, "responsibilities"),
    ({"train": {"relabel_every": 0}}, "relabel_every"),
    ({"model": {"arch": "resnet"}}, "choose one of"),
    ({"data": {"dataset": "imagenet21k"}}, "imagenet21k"),
])
def test_bad_config_fails_clearly_and_writes_nothing(tiny_config, overrides, message):
    from pathlib import Path
    with pytest.raises(ValueError, match=message):
        pipeline.run(merge(tiny_config, overrides))
    assert not (Path(tiny_config.run.out_dir) / "tiny").exists()


def test_derived_seeds_differ_by_purpose_and_step():
    s = {pipeline.derive_seed(0, p, i) for p in ("cluster", "epoch") for i in range(50)}
    assert len(s) == 100

    # the same in another process with another string-hash seed (a seed from hash() would differ there)
    import os
    import subprocess
    import sys
    from pathlib import Path
    code = "from bayes_dc.loop.pipeline import derive_seed; print(derive_seed(3, 'cluster', 1))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert int(out) == pipeline.derive_seed(3, "cluster", 1)


def test_permute_head_moves_rows():
    head = torch.nn.Linear(4, 5)
    perm = np.array([2, 0, -1, 1, 4])  # old 2 was reset; new 3 has no predecessor
    new = pipeline.permute_head(head, perm, torch.Generator().manual_seed(0))
    for old, newid in enumerate(perm):
        if newid >= 0:
            assert torch.equal(new.weight[newid], head.weight[old]) and new.bias[newid] == head.bias[old]
    assert not any(torch.equal(new.weight[3], head.weight[j]) for j in range(5))


def test_relabel_every_e_reclusters_exactly_every_e_epochs(tiny_config, tmp_path):
    cfg = merge(tiny_config, {"train": {"epochs": 7, "relabel_every": 3}, "run": {"knn_every": 0}})
    pipeline.run(cfg)
    records = [r for r in read(tmp_path / "runs" / "tiny") if r["phase"] == "train"]
    assert [r["epoch"] for r in records if "round" in r] == [0, 3, 6]
    assert [r["round"] for r in records if "round" in r] == [0, 1, 2]
    assert len(list((tmp_path / "runs" / "tiny" / "clusters").glob("*.npz"))) == 4  # 3 rounds + final


def test_adaptive_relabel_rule():
    tr = {"relabel": "adaptive", "relabel_agreement": 0.8, "relabel_max_gap": 4}
    adaptive = merge(Config(), {"train": tr})
    assert pipeline.relabel_due(adaptive, 0, None, None)
    assert not pipeline.relabel_due(adaptive, 1, 0, 0.5)
    assert pipeline.relabel_due(adaptive, 1, 0, 0.85)          # targets learned -> stale
    assert pipeline.relabel_due(adaptive, 4, 0, 0.1)           # max gap reached
    fixed = merge(Config(), {"train": {"relabel_every": 3}})
    assert [pipeline.relabel_due(fixed, e, 0, 0.99) for e in range(1, 5)] == [False, False, True, True]


def test_relabel_schedule_and_space_defaults_follow_the_prior():
    """Unset, --relabel-every and --reduce take the prior's default (DeepCluster's for k-means); set, they win."""
    kmeans, dp = (merge(Config(), {"cluster": {"prior": p}}) for p in ("kmeans", "dp"))
    assert [pipeline.relabel_due(kmeans, e, 0, None) for e in (1, 2)] == [True, True]
    assert [pipeline.relabel_due(dp, e, 0, None) for e in (1, 2)] == [False, True]
    assert (kmeans.reduce, kmeans.pca_dim, dp.reduce, dp.pca_dim) == ("pca", 256, "umap", 50)
    chosen = merge(dp, {"features": {"reduce": "pca"}, "train": {"relabel_every": 1}})
    assert (chosen.reduce, chosen.pca_dim, chosen.relabel_every) == ("pca", 64, 1)
    assert option_used("umap_neighbors", {"prior": "dp"}) and not option_used("umap_neighbors", {"prior": "kmeans"})


def test_tensorboard_logs_scalars_and_cluster_grid(tiny_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pipeline.run(merge(tiny_config, {"train": {"epochs": 2}, "run": {"tensorboard": True}}))
    acc = EventAccumulator(str(tmp_path / "runs" / "tiny" / "tensorboard")).Reload()
    nmi = [e.value for e in acc.Scalars("round/nmi")]
    records = read(tmp_path / "runs" / "tiny")
    assert nmi == pytest.approx([r["nmi"] for r in records])
    grid = acc.Images("clusters/largest")
    assert len(grid) == 2 and grid[0].width > 0


def test_cluster_grid_rows_follow_cluster_sizes():
    from bayes_dc.rundir.tblog import cluster_grid
    images = torch.zeros(30, 1, 4, 4, dtype=torch.uint8)
    labels = np.repeat([0, 1, 2], [5, 20, 5])
    images[labels == 1] = 200  # the largest cluster is bright
    grid = cluster_grid(images, labels, np.bincount(labels) / 30, n_clusters=2, per_cluster=3)
    assert grid.shape[-2:] == (2 * 6 + 2, 3 * 6 + 2)
    assert grid[0, 2:6, 2:6].float().mean() == 200  # first row = cluster 1


def test_kept_head_predicts_the_next_rounds_ids():
    """--head keep: a head trained on round r's labels, its rows moved as the DP-GMM renumbers its components
    in a warm-started round r+1, predicts round r+1's ids for the same points."""
    rng = np.random.default_rng(3)
    centres = np.zeros((3, 6))
    centres[0, 0], centres[1, 0], centres[2, 1] = -6, 6, 10
    x0 = np.vstack([c + rng.normal(size=(n, 6)) for c, n in zip(centres, [500, 490, 480])]).astype(np.float32)
    # Round r+1: the 30 points of the middle-sized cluster nearest to the smallest one move over, so the sizes
    # (which order the DP's ids) rotate: the ids change by a 3-cycle, which is its own inverse in no way.
    x1 = x0.copy()
    second = np.arange(500, 990)
    x1[second[np.argsort(-x0[second, 1])[:30]]] += centres[2] - centres[1]
    backend = make_backend(ClusterConfig(prior="dp", truncation=10, warm_start="init"), "cpu")
    r0 = backend.fit(torch.from_numpy(x0), seed=0)
    r1 = backend.fit(torch.from_numpy(x1), seed=1, warm_state=r0.state)
    assert np.bincount(r0.labels).tolist() == [500, 490, 480] and np.bincount(r1.labels).tolist() == [510, 500, 460]
    assert r1.permutation[:3].tolist() == [1, 2, 0]

    from sklearn.linear_model import LogisticRegression
    fit = LogisticRegression(max_iter=2000).fit(x0, r0.labels)
    head = torch.nn.Linear(6, 10)
    with torch.no_grad():  # rows of unused components never win the argmax
        head.weight.zero_()
        head.bias.fill_(-1e4)
        head.weight[fit.classes_] = torch.tensor(fit.coef_, dtype=torch.float32)
        head.bias[fit.classes_] = torch.tensor(fit.intercept_, dtype=torch.float32)

    def predict(h, x):
        return h(torch.from_numpy(x)).argmax(1).numpy()

    assert (predict(head, x0) == r0.labels).mean() > 0.98
    kept = pipeline.permute_head(head, r1.permutation, torch.Generator().manual_seed(0))
    assert (predict(kept, x1) == r1.labels).mean() > 0.97
    assert (predict(head, x1) == r1.labels).mean() < 0.05  # without the permutation it predicts old ids


def test_dp_run_with_head_keep_trains_the_permuted_head(tiny_config, tmp_path, monkeypatch):
    made, trained = [], []
    real_permute, real_train = pipeline.permute_head, pipeline.train_epoch

    def permute_spy(*args):
        made.append(real_permute(*args))
        return made[-1]

    def train_spy(ctx, *args, **kwargs):
        trained.append(ctx.model.head)
        return real_train(ctx, *args, **kwargs)

    monkeypatch.setattr(pipeline, "permute_head", permute_spy)
    monkeypatch.setattr(pipeline, "train_epoch", train_spy)
    pipeline.run(merge(merge(tiny_config, DP_TINY), {"train": {"epochs": 3}}))
    assert len(made) == len(trained) == 3 and all(t is m for t, m in zip(trained, made))  # one per relabel
    records = read(tmp_path / "runs" / "tiny")
    assert all(np.isclose(sum(r["weights"]), 1, atol=0.01) for r in records)


def test_warm_start_prior_differs_from_init_from_the_second_round(tiny_config, tmp_path):
    """--warm-start prior adds the previous posterior to the prior: the same run with init differs from round 1
    on (round 0 is cold for both; round 1 is the final clustering after one epoch)."""
    base = merge(merge(tiny_config, DP_TINY), {"targets": {"targets": "hard", "head": "reset"},
                                                "train": {"epochs": 1}, "run": {"knn_every": 0}})
    rounds = {}
    for warm in ("init", "prior"):
        pipeline.run(merge(base, {"cluster": {"warm_start": warm}, "run": {"name": warm}}))
        rounds[warm] = [r for r in read(tmp_path / "runs" / warm) if "round" in r]
    assert [r["backend_info"]["warm_start"] for r in rounds["prior"]] == ["none", "prior"]
    init, prior = rounds["init"], rounds["prior"]
    assert init[0]["objective"] == prior[0]["objective"] and init[0]["weights"] == prior[0]["weights"]
    assert init[1]["objective"] != prior[1]["objective"] and init[1]["weights"] != prior[1]["weights"]


def test_projection_space_is_what_gets_clustered_and_trains_with_the_trunk(tiny_config, tmp_path):
    cfg = merge(tiny_config, DP_PROJECTION)
    ctx = pipeline.setup(cfg)
    initial = {k: v.clone() for k, v in ctx.model.projection.state_dict().items()}
    pipeline.run(merge(cfg, {"run": {"name": "proj"}}))
    rounds = [r for r in read(tmp_path / "runs" / "proj") if "round" in r]
    assert rounds and all(r["feature_dim"] == 6 for r in rounds)            # the DP saw the 6-d projection
    trained = torch.load(tmp_path / "runs" / "proj" / "last.pt", weights_only=False)["model"]
    assert not torch.equal(trained["projection.mlp.0.weight"], initial["mlp.0.weight"])   # optimised with the trunk
    assert trained["head.weight"].shape == (20, 6)                          # the head sits on the projection


def test_two_views_learn_the_other_views_responsibilities(tiny_config, tmp_path, monkeypatch):
    """With --two-views each view's loss target is the fit's assignment of the *other* view, computed on the fly."""
    from bayes_dc.loop import trainer as train
    seen = []
    real = train.swapped_targets

    def spy(kind, values_a, index_a, values_b, index_b, *args):
        seen.append((index_a.clone(), index_b.clone()))
        return real(kind, values_a, index_a, values_b, index_b, *args)

    monkeypatch.setattr(train, "swapped_targets", spy)
    # trunk features, whitened PCA-6: several clusters from the first round on
    pipeline.run(merge(merge(tiny_config, DP_TINY), {"train": {"epochs": 1, "two_views": True}}))
    assert seen and all(a.shape == b.shape for a, b in seen)
    # the two views of an image are assigned differently for some images (else the swap would teach nothing new)
    assert any(not torch.equal(a[:, 0], b[:, 0]) for a, b in seen)


def test_two_views_on_the_parametric_space_learn_the_other_views_responsibilities(tiny_config, tmp_path,
                                                                                   monkeypatch):
    """--two-views on --reduce pumap: each augmented view is mapped by the round's encoder and assigned by the DP
    posterior, and the loss of one view targets the other view's responsibilities (checked against the same maps
    computed here from the views' embeddings)."""
    from bayes_dc.loop import trainer as train
    seen = []
    real_targets, real_resp = train.swapped_targets, train.view_responsibilities

    def spy_resp(ctx, embeddings, views, used):
        values, index = real_resp(ctx, embeddings, views, used)
        points = ctx.reducer.transform(embeddings.detach(), views.reduce_state)
        expected_values, expected_index = ctx.backend.responsibilities(views.predictor, points, allowed=used)
        assert torch.equal(index, expected_index) and torch.equal(values, expected_values)
        return values, index

    def spy_targets(kind, values_a, index_a, values_b, index_b, *args):
        out = real_targets(kind, values_a, index_a, values_b, index_b, *args)
        seen.append((index_a.clone(), index_b.clone(), out))
        return out

    monkeypatch.setattr(train, "view_responsibilities", spy_resp)
    monkeypatch.setattr(train, "swapped_targets", spy_targets)
    pipeline.run(merge(tiny_config, {**DP_PUMAP, "targets": {"targets": "soft"},
                                     "train": {"epochs": 1, "two_views": True, "augment": "resized-crop"}}))
    assert seen and any(not torch.equal(a[:, 0], b[:, 0]) for a, b, _ in seen)


def test_the_space_loss_rewards_close_views_and_reaches_the_trunk(tiny_config):
    """--space-weight: in a trained parametric space two views of the same images score a lower UMAP loss than
    unrelated images (same negatives), and the loss has a gradient on the trunk's weights (it trains the ConvNet,
    not the encoder)."""
    from bayes_dc.loop import trainer as train
    from bayes_dc.spaces.parametric import ParametricUMAPReducer
    cfg = merge(tiny_config, {**DP_PUMAP, "train": {"two_views": True, "space_weight": 1.0}})
    ctx = pipeline.setup(merge(cfg, {"run": {"name": "space"}}))
    # an encoder trained long enough to mean something (the run's tiny settings take two steps)
    ctx.reducer = ParametricUMAPReducer(dim=3, pca_dim=8, n_neighbors=10, hidden=16, epochs=30, batch_size=128)
    _, batch = next(iter(ctx.train_source.train_batches(torch.arange(300), 300)))
    x = train.standardize(batch.float() / 255, ctx.mean, ctx.std)
    ctx.model.eval()   # batch norm in eval mode: the trunk gives the features the space was fitted on
    with torch.no_grad():
        reduction = ctx.reducer.reduce(ctx.model.trunk(x), seed=0)
    views = train.SwappedViews(predictor={}, reduce_state=reduction.state)
    z = ctx.model.embed(x)
    same = train.space_loss(ctx, z, z + 1e-4 * torch.randn_like(z), views, torch.Generator().manual_seed(0))
    other = train.space_loss(ctx, z, z.roll(7, 0), views, torch.Generator().manual_seed(0))
    assert same < other
    same.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.model.trunk.parameters())


def test_a_2000_image_dp_run_with_the_defaults_keeps_its_clusters(tmp_path):
    """The issue that made the DP what it is: with the old prior a 4,000-image run fell to 2 components. With the
    defaults (UMAP space, full covariances, the weak prior, moves) a 2,000-image run of 10 known clusters keeps at
    least 5 in every round: the prior's cost per component no longer grows against a likelihood that shrinks with N."""
    cfg = merge(Config(), {
        "data": {"dataset": "synthetic", "subset": 2000, "eval_subset": 200},
        "model": {"width": 4},
        "cluster": {"prior": "dp", "truncation": 50},
        "train": {"epochs": 2, "batch_size": 128},
        "run": {"out_dir": str(tmp_path / "runs"), "name": "small", "progress": False, "figures": False,
                "knn_every": 0}})
    assert cfg.reduce == "umap" and cfg.relabel_every == 2
    pipeline.run(cfg)
    rounds = [r for r in read(tmp_path / "runs" / "small") if "round" in r]
    assert len(rounds) == 2                                                 # epoch 0 and the final one
    assert all(r["k_active"] >= 5 for r in rounds), [r["k_active"] for r in rounds]


# diagonal components and a larger concentration tile the synthetic classes, so that some components merge
DP_TWO_HEADS = {"cluster": {"prior": "dp", "truncation": 20, "max_iter": 30, "group": "overlap", "covariance": "diag",
                            "alpha": 10.0},
                "features": {"pca_dim": 6}, "targets": {"targets": "soft", "coarse_head": True}}


def test_two_heads_on_grouped_components_record_both_counts_and_resume_bit_identically(tiny_config, tmp_path,
                                                                                         monkeypatch):
    """--coarse-head --group overlap: the resume test above (interrupted at epoch 2, resumed: same records, same
    weights, coarse head included), then what the run recorded and trained on."""
    test_resume_after_interruption_matches_uninterrupted_run(tiny_config, tmp_path, monkeypatch, DP_TWO_HEADS)
    run_dir = tmp_path / "runs" / "full"
    records = read(run_dir)
    rounds = [r for r in records if "round" in r]
    assert [r["epoch"] for r in rounds] == [0, 2, 4]                    # two relabels and the final clustering
    classes = load_dataset("synthetic", "train", subset=300, seed=0).labels
    snaps = [np.load(p) for p in sorted((run_dir / "clusters").glob("round_*.npz"))]
    for rec, snap in zip(rounds, snaps):
        assert 1 <= rec["k_active"] <= rec["k_groups"] and 0.0 <= rec["nmi"] <= 1.0
        assert rec["k_fine"] == int((snap["weights"] >= 0.005).sum())   # the components' count (T = 20: 0.5 %)
        assert rec["nmi_fine"] == pytest.approx(normalized_mutual_info_score(classes, snap["labels"]), abs=1e-12)
    assert sum(r["group_merges"] for r in rounds) > 0 and any(r["k_active"] < r["k_fine"] for r in rounds)
    assert all(np.isfinite(r["loss"]) for r in records if r["phase"] == "train")
    model = torch.load(run_dir / "last.pt", weights_only=False)["model"]
    assert model["coarse_head.weight"].shape == model["head.weight"].shape
    # a loaded run reports the group of a new image: the final grouping of its component
    import bayes_dc
    loaded = bayes_dc.load_run(run_dir)
    images = load_dataset("synthetic", "train", subset=300, seed=0).images[:50]
    labels = loaded.assign(images)[0]
    np.testing.assert_array_equal(labels, snaps[-1]["labels"][:50])
    groups = loaded.groups(labels)
    assert (groups >= 0).all() and groups.max() < rounds[-1]["k_groups"]
    np.testing.assert_array_equal(groups, loaded.component_group[labels])


def test_the_coarse_head_trains_on_the_groups_of_the_fine_targets(tiny_config, tmp_path, monkeypatch):
    seen = []
    real_train_epoch = pipeline.train_epoch

    def spy(ctx, targets, *args, **kwargs):
        seen.append((targets, ctx.model.coarse_head.weight.detach().clone()))
        return real_train_epoch(ctx, targets, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_epoch", spy)
    cfg = merge(merge(tiny_config, {"train": {"epochs": 2, "relabel_every": 1}}), DP_TWO_HEADS)
    pipeline.run(merge(cfg, {"targets": {"targets": "hard"}}))
    for targets, _ in seen:
        coarse = targets.coarse
        # each component's points share one coarse label: the coarse labels are a function of the fine ones
        for component in np.unique(targets.labels.numpy()):
            assert len(np.unique(coarse.labels.numpy()[targets.labels.numpy() == component])) == 1
        assert coarse.used.sum() <= targets.used.sum()
    assert not torch.equal(seen[0][1], seen[1][1])                     # a fresh coarse head each relabel


@pytest.mark.parametrize("overrides, message", [
    ({"targets": {"coarse_head": True}}, "coarse_head=True.*group="),
    ({"cluster": {"group": "overlap"}, "targets": {"coarse_head": True, "targets": "soft"},
      "train": {"two_views": True}, "features": {"cluster_on": "projection", "reduce": "none"}}, "two_views=False"),
])
def test_coarse_head_without_groups_fails_clearly(tiny_config, overrides, message):
    cfg = merge(merge(tiny_config, {"cluster": {"prior": "dp"}}), overrides)
    with pytest.raises(ValueError, match=message):
        pipeline.validate(cfg)
