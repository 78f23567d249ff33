"""End-to-end behaviour of the round loop: determinism, resume, run-directory safety (CLI: test_cli.py)."""
import json

import numpy as np
import pytest
import torch

from bayes_dc import pipeline
from bayes_dc.config import Config, merge
from bayes_dc.runlog import RunDirError

TIMING = ("seconds", "share")


def comparable(records):
    """metrics.jsonl records without wall-clock fields (they legitimately differ between runs)."""
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING) and k != "backend_info"}
            for r in records]


def read(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_run_directory(tiny_config):
    cfg = merge(tiny_config, {"run": {"figures": True}})
    final = pipeline.run(cfg)
    run_dir = tiny_config.run.out_dir + "/tiny"
    from pathlib import Path
    d = Path(run_dir)
    assert Config.from_json(d / "config.json") == cfg
    env = json.loads((d / "environment.json").read_text())
    assert env["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0] and "git_revision" in env
    records = read(d)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["phase"] == "final" and records[-1] == final
    assert "nmi_prev" not in records[0] and all("nmi_prev" in r for r in records[1:])
    assert all(0.0 <= r["nmi"] <= 1.0 for r in records)
    assert [r for r in records if "knn" in r][0]["epoch"] == 0
    snaps = sorted((d / "clusters").glob("round_*.npz"))
    assert len(snaps) == 4
    snap = np.load(snaps[0])
    assert snap["labels"].shape == (300,) and np.allclose(snap["resp_values"].astype(np.float32).sum(1), 1)
    assert (d / "figures" / "rounds.png").stat().st_size > 0 and (d / "figures" / "rounds.pdf").exists()
    lineage = [json.loads(line) for line in (d / "lineage.jsonl").read_text().splitlines()]
    assert [e["round"] for e in lineage] == [1, 2, 3]
    for event, rec in zip(lineage, records[1:]):  # every active component of the previous round is accounted for
        assert event["n_active_new"] == rec["k_active"]


def test_same_seed_same_metrics(tiny_config, tmp_path):
    a = merge(tiny_config, {"run": {"name": "a"}})
    b = merge(tiny_config, {"run": {"name": "b"}})
    pipeline.run(a)
    pipeline.run(b)
    ra, rb = read(tmp_path / "runs" / "a"), read(tmp_path / "runs" / "b")
    assert comparable(ra) == comparable(rb)
    c = merge(tiny_config, {"run": {"name": "c", "seed": 1}})
    pipeline.run(c)
    assert comparable(read(tmp_path / "runs" / "c")) != comparable(ra)


DP_TINY = {"cluster": {"prior": "dp", "truncation": 20, "warm_start": "prior", "max_iter": 30},
           "targets": {"targets": "soft", "head": "keep"}}


@pytest.mark.parametrize("overrides", [{}, DP_TINY], ids=["kmeans", "dp-soft-keep-warm"])
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


def test_existing_run_directory_is_never_overwritten(tiny_config):
    pipeline.run(tiny_config)
    from pathlib import Path
    d = Path(tiny_config.run.out_dir) / "tiny"
    before = (d / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="--resume"):
        pipeline.run(tiny_config)
    with pytest.raises(RunDirError, match="cluster.k"):
        pipeline.run(merge(tiny_config, {"cluster": {"k": 12}, "run": {"resume": True}}))
    assert (d / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("overrides, message", [
    ({"cluster": {"prior": "gmm"}}, "choose one of"),
    ({"targets": {"head": "keep"}}, "identities"),
    ({"targets": {"targets": "soft"}}, "responsibilities"),
    ({"train": {"relabel_every": 0}}, "relabel-every"),
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
    assert pipeline.derive_seed(3, "cluster", 1) == pipeline.derive_seed(3, "cluster", 1)


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
    from bayes_dc.config import TrainConfig
    tr = TrainConfig(relabel="adaptive", relabel_agreement=0.8, relabel_max_gap=4)
    assert pipeline.relabel_due(tr, 0, None, None)
    assert not pipeline.relabel_due(tr, 1, 0, 0.5)
    assert pipeline.relabel_due(tr, 1, 0, 0.85)          # targets learned -> stale
    assert pipeline.relabel_due(tr, 4, 0, 0.1)           # max gap reached
    fixed = TrainConfig(relabel_every=2)
    assert [pipeline.relabel_due(fixed, e, 0, 0.99) for e in range(1, 5)] == [False, True, True, True]


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
    from bayes_dc.tblog import cluster_grid
    images = torch.zeros(30, 1, 4, 4, dtype=torch.uint8)
    labels = np.repeat([0, 1, 2], [5, 20, 5])
    images[labels == 1] = 200  # the largest cluster is bright
    grid = cluster_grid(images, labels, np.bincount(labels) / 30, n_clusters=2, per_cluster=3)
    assert grid.shape[-2:] == (2 * 6 + 2, 3 * 6 + 2)
    assert grid[0, 2:6, 2:6].float().mean() == 200  # first row = cluster 1


def test_dp_run_keeps_head_rows_of_kept_components(tiny_config, tmp_path, monkeypatch):
    """With --head keep, a component's head row survives relabelling under its new id (the permutation)."""
    seen = []
    real = pipeline.permute_head

    def spy(head, permutation, generator):
        new = real(head, permutation, generator)
        seen.append((head.weight.detach().clone(), new.weight.detach().clone(), permutation.copy()))
        return new

    monkeypatch.setattr(pipeline, "permute_head", spy)
    pipeline.run(merge(merge(tiny_config, DP_TINY), {"train": {"epochs": 3}}))
    assert len(seen) == 3  # one per relabel
    for old_w, new_w, perm in seen[1:]:
        kept = np.flatnonzero(perm >= 0)
        assert kept.size > 0
        assert torch.equal(new_w[perm[kept]], old_w[kept])
    records = read(tmp_path / "runs" / "tiny")
    assert all(r["k_active"] >= 1 and np.isclose(sum(r["weights"]), 1, atol=0.01) for r in records)
