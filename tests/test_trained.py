"""Using a trained run: load_run, assign / novelty, experiments/assign.py and export.py, the standalone loader."""
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bayes_dc
from bayes_dc.clustering import make_backend
from bayes_dc.clustering.dpgmm import DPGMMBackend
from bayes_dc.clustering.dpgmm.predictive import log_predictive
from bayes_dc.config.schema import ClusterConfig, Config, merge
from bayes_dc.data import load_dataset
from bayes_dc.loop.pipeline import run
from bayes_dc.rundir.final import FINAL_CHECKPOINT
from bayes_dc.spaces.pca import PCAReducer
from bayes_dc.rundir.runlog import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN = 300


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}_script", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(out_dir: Path, name: str, cluster: dict, features: dict | None = None) -> Path:
    cfg = merge(Config(), {
        "data": {"dataset": "synthetic", "subset": N_TRAIN, "eval_split": "none"},
        "model": {"width": 4},
        "features": {"pca_dim": 16, "extract_batch": 300, "reduce": "pca", **(features or {})},
        "cluster": cluster,
        "train": {"epochs": 1, "batch_size": 64, "relabel_every": 1},
        "run": {"out_dir": str(out_dir), "name": name, "progress": False, "figures": False, "threads": 1},
    })
    run(cfg)
    return out_dir / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished DP runs (diagonal covariance: K > 1 at this size) on PCA and on the parametric space, and a k-means
    run, 1 epoch on 300 images."""
    out = tmp_path_factory.mktemp("runs")
    return {"dp": _train(out, "dp", {"prior": "dp", "truncation": 30, "covariance": "diag"}),
            "dp-pumap": _train(out, "dp-pumap", {"prior": "dp", "truncation": 30, "covariance": "diag"},
                               {"reduce": "pumap", "pca_dim": 8, "reduce_dim": 3, "umap_neighbors": 10,
                                "pumap_hidden": 16, "pumap_epochs": 2}),
            "kmeans": _train(out, "kmeans", {"prior": "kmeans", "k": 10})}


@pytest.fixture(scope="module")
def train_images():
    return load_dataset("synthetic", "train", subset=N_TRAIN, seed=0).images


def _final_snapshot_labels(run_dir: Path) -> np.ndarray:
    with np.load(sorted((run_dir / "clusters").glob("round_*.npz"))[-1]) as snap:
        return snap["labels"].astype(np.int64)


@pytest.mark.parametrize("prior", ["dp", "dp-pumap", "kmeans"])
def test_assign_on_the_training_images_reproduces_the_final_labels(runs, train_images, prior):
    """Exactly, for k-means (nearest centroid both times) and the DP (the fit ends with an E-step under its final
    posterior, which is what assign runs; before that final E-step 0.6 % of 10,000 Fashion-MNIST labels moved)."""
    loaded = bayes_dc.load_run(runs[prior])
    labels, values, index = loaded.assign(train_images)
    expected = _final_snapshot_labels(runs[prior])
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(values.sum(1), 1.0, atol=1e-5)
    assert (index[:, 0] == labels).all()


def test_posterior_of_a_dp_run_is_a_distribution_over_components_and_a_new_one(runs):
    """The live components' weights are the fit's E[pi_k] of those ids, and the new-component weight is the stick
    mass of every other slot (the tail among them), read from final.pt's full weight vector (T,)."""
    loaded = bayes_dc.load_run(runs["dp"])
    post = loaded.posterior
    ids = post["ids"]
    assert len(ids) < len(loaded.weights)          # some slot is free here (the saturated case: test_dpgmm)
    np.testing.assert_allclose(post["weights"], loaded.weights[ids], rtol=1e-5)
    others = np.setdiff1d(np.arange(len(loaded.weights)), ids)
    assert post["new_weight"] > 0
    assert post["new_weight"] == pytest.approx(float(loaded.weights[others].astype(np.float64).sum()), rel=1e-4)
    k, d = post["means"].shape
    assert post["covariances"].shape == (k, d) and (post["covariances"] > 0).all()   # diag: E[sigma^2] per dim


def test_novelty_warns_where_the_space_cannot_place_new_points_apart(runs, train_images):
    """A reducer that interpolates between training points (the UMAP layout's out-of-sample map) says so by its
    own attribute; load_run passes the warning on without knowing the reducer."""
    loaded = bayes_dc.load_run(runs["dp"])
    assert loaded.novelty(train_images[:5]).warning is None
    loaded.reducer.maps_novel_points_apart = False
    assert "novelty misses" in loaded.novelty(train_images[:5]).warning


def test_kmeans_novelty_is_the_distance_to_the_nearest_centroid(runs, train_images):
    loaded = bayes_dc.load_run(runs["kmeans"])
    nov = loaded.novelty(train_images[:50])
    centroids = torch.from_numpy(loaded.posterior["centroids"]).float()
    reference = torch.cdist(loaded.points(train_images[:50]), centroids).min(1).values
    assert nov.kind == "distance" and nov.flag is None
    np.testing.assert_allclose(nov.score, reference.numpy(), rtol=1e-4, atol=1e-5)


def test_exported_trunk_needs_only_torch_and_gives_the_same_features(runs, train_images, tmp_path):
    out = tmp_path / "export"
    assert _script("export").main([str(runs["dp"]), "--out", str(out)]) == 0
    torch.save(train_images[:64].clone(), tmp_path / "images.pt")
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from trunk_loader import load_trunk; "
            "trunk, pre = load_trunk(sys.argv[1]); x = torch.load(sys.argv[2]); "
            "torch.save(trunk(pre(x)).detach(), sys.argv[3]); "
            "assert not any(m.startswith('bayes_dc') for m in sys.modules), 'bayes_dc was imported'")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "images.pt"), str(tmp_path / "f.pt")],
                   cwd=tmp_path, env=env, check=True, capture_output=True)
    standalone = torch.load(tmp_path / "f.pt")
    assert torch.allclose(standalone, bayes_dc.load_run(runs["dp"]).features(train_images[:64]), atol=1e-6, rtol=0)
    # a damaged trunk.pt is refused (sha256 in trunk.json)
    (out / "trunk.pt").write_bytes((out / "trunk.pt").read_bytes()[:-8] + b"\0" * 8)
    sys.path.insert(0, str(out))
    try:
        loader = importlib.import_module("trunk_loader")
        with pytest.raises(ValueError, match="sha256"):
            loader.load_trunk(out)
    finally:
        sys.path.remove(str(out))
        sys.modules.pop("trunk_loader", None)
    assert _script("export").main([str(runs["dp"]), "--out", str(out)]) == 2   # refuses to overwrite


def _loader(folder: Path):
    spec = importlib.util.spec_from_file_location("_exported_trunk_loader", folder / "trunk_loader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_refuses_a_non_empty_out_writes_no_machine_path_and_names_a_missing_key(runs, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "models.py").write_text("# the user's own file\n")
    assert _script("export").main([str(runs["dp"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and "--force" in err, err
    assert (out / "models.py").read_text() == "# the user's own file\n" and sorted(os.listdir(out)) == ["models.py"]
    assert _script("export").main([str(runs["dp"]), "--out", str(out), "--force"]) == 0
    text = (out / "trunk.json").read_text()
    for machine_path in (str(runs["dp"].resolve()), str(runs["dp"].resolve().parent), str(ROOT), os.path.expanduser("~")):
        assert machine_path not in text
    meta = json.loads(text)
    for drop in ("sha256", "architecture"):
        broken = tmp_path / f"no-{drop}"
        broken.mkdir()
        for name in ("trunk.pt", "models.py", "trunk_loader.py"):
            (broken / name).write_bytes((out / name).read_bytes())
        (broken / "trunk.json").write_text(json.dumps({k: v for k, v in meta.items() if k != drop}))
        with pytest.raises(ValueError, match=rf"trunk\.json lacks {drop}") as info:
            _loader(broken).load_trunk(broken)
        assert len(str(info.value).splitlines()) == 1


def test_the_standalone_loader_loads_the_bytes_it_verified(runs, tmp_path, monkeypatch):
    """trunk.pt replaced right after the loader read it (another process exporting into the same folder): the trunk
    built is the one whose sha256 was checked, not the file now on disk."""
    out = tmp_path / "export"
    assert _script("export").main([str(runs["dp"]), "--out", str(out)]) == 0
    loader = _loader(out)
    verified, _ = loader.load_trunk(out)
    other = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in verified.state_dict().items()}
    real_read_bytes = Path.read_bytes

    def read_then_swap(path):
        data = real_read_bytes(path)
        if path.name == "trunk.pt":
            torch.save(other, path)
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_swap)
    loaded, _ = loader.load_trunk(out)
    for key, value in verified.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_damaged_final_checkpoint_is_named_and_never_replaced_by_the_training_checkpoints(runs, tmp_path, capsys):
    """final.pt truncated, or with one byte flipped: one line naming final.pt and why; the run directory's last.pt /
    prev.pt (training checkpoints, which verify) are not loaded in its place."""
    import shutil
    from bayes_dc.rundir.runlog import CheckpointError
    for damage in ("truncate", "flip"):
        copy = tmp_path / damage
        shutil.copytree(runs["dp"], copy)
        assert (copy / "last.pt").exists() and load_checkpoint(copy / "last.pt") is not None
        data = bytearray((copy / FINAL_CHECKPOINT).read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0xFF
        (copy / FINAL_CHECKPOINT).write_bytes(bytes(data))
        with pytest.raises(CheckpointError) as info:
            bayes_dc.load_run(copy)
        message = str(info.value)
        assert len(message.splitlines()) == 1 and "final.pt" in message, message
        assert ("truncated" if damage == "truncate" else "damaged") in message
        assert "prev.pt" not in message and "last.pt" not in message and "format" not in message
        _one_line_exit_2(capsys, [str(copy), "--images", str(tmp_path), "--no-progress"], "final.pt")


def _write_folder(folder: Path, images: torch.Tensor, mode: str = "L") -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        array = image[0].numpy()
        Image.fromarray(array if mode == "L" else np.stack([array] * 3, -1)).convert(mode).save(folder / f"{i:03d}.png")


def test_assign_script_streams_a_folder_into_the_csv(runs, tmp_path):
    images = load_dataset("synthetic", "test", subset=40, seed=1).images
    _write_folder(tmp_path / "imgs" / "sub", images)
    out, montage = tmp_path / "a.csv", tmp_path / "m.png"
    assert _script("assign").main([str(runs["dp"]), "--images", str(tmp_path / "imgs"), "--out", str(out),
                                   "--montage", str(montage), "--no-progress", "--batch-size", "16"]) == 0
    rows = list(csv.DictReader(out.open()))
    labels, values, _ = bayes_dc.load_run(runs["dp"]).assign(images)
    assert [r["path"] for r in rows] == [f"sub/{i:03d}.png" for i in range(40)]
    assert [int(r["cluster"]) for r in rows] == labels.tolist()
    np.testing.assert_allclose([float(r["responsibility"]) for r in rows], values[:, 0], atol=1e-5)
    assert all(r["novel"] == str(int(float(r["novelty_probability"]) > 0.5)) for r in rows)
    assert montage.stat().st_size > 0


def _one_line_exit_2(capsys, argv, match):
    assert _script("assign").main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_assign_script_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys):
    images = load_dataset("synthetic", "test", subset=6, seed=1).images
    good = tmp_path / "good"
    _write_folder(good, images)
    common = ["--out", str(tmp_path / "x.csv"), "--no-progress"]
    # a run directory without final.pt (an unfinished run)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps(Config().to_dict()))
    _one_line_exit_2(capsys, [str(unfinished), "--images", str(good), *common], "has not finished")
    (unfinished / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "phase": "final"}) + "\n")
    _one_line_exit_2(capsys, [str(unfinished), "--images", str(good), *common], "train it again")
    # an unreadable image, named
    broken = tmp_path / "broken"
    _write_folder(broken, images)
    (broken / "003.png").write_bytes(b"not a png")
    _one_line_exit_2(capsys, [str(runs["dp"]), "--images", str(broken), *common], "003.png")
    # colour images for a grey run
    colour = tmp_path / "colour"
    _write_folder(colour, images, mode="RGB")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(colour / "000.png")
    _one_line_exit_2(capsys, [str(runs["dp"]), "--images", str(colour), "--batch-size", "2", *common], "channel")
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("change,match", [({"format": "bayes_dc-final/0"}, "format"),
                                          ({"format": "bayes_dc-final/2"}, "bayes_dc-final/2"),   # a newer one
                                          ({"config": {"cluster": {"no_such_option": 1}}}, "config"),
                                          ({"input": None}, "lacks input"),
                                          ({"predictor": None}, "lacks predictor"),
                                          ({"input": {"channels": 1}}, "input.image_size")])
def test_a_run_from_an_incompatible_version_is_refused(runs, tmp_path, capsys, change, match):
    """Another or a newer format, a config this version cannot read, a final.pt missing a key (None here: the key
    removed): one line naming final.pt, exit 2 from assign.py."""
    old = tmp_path / "old"
    old.mkdir()
    checkpoint = load_checkpoint(runs["kmeans"] / FINAL_CHECKPOINT)
    changed = {k: v for k, v in {**checkpoint, **change}.items() if v is not None}
    save_checkpoint(changed, old / FINAL_CHECKPOINT, keep_previous=False)
    _one_line_exit_2(capsys, [str(old), "--images", str(tmp_path), "--no-progress"], match)


def test_a_final_checkpoint_with_a_newer_manifest_says_so(runs, tmp_path, capsys):
    import shutil
    copy = tmp_path / "newer"
    copy.mkdir()
    shutil.copy(runs["kmeans"] / FINAL_CHECKPOINT, copy / FINAL_CHECKPOINT)
    manifest = json.loads((runs["kmeans"] / f"{FINAL_CHECKPOINT}.json").read_text())
    (copy / f"{FINAL_CHECKPOINT}.json").write_text(json.dumps({**manifest, "format": "bayes_dc-checkpoint-manifest/2"}))
    _one_line_exit_2(capsys, [str(copy), "--images", str(tmp_path), "--no-progress"], "manifest/2")


# ---- the DP's novelty -----------------------------------------------------------------------------------------

def test_novelty_flags_a_cluster_held_out_of_training(one_thread):
    """Synthetic images (10 clusters), pixel PCA-16; the DP is fitted without cluster 9. Measured (seed 0, 1,500
    test images): 100 % of the held-out cluster flagged, 0 % of the others (acceptance: >= 90 %, <= 5 %)."""
    held_out = 9
    train = load_dataset("synthetic", "train", subset=2000, seed=0)
    test = load_dataset("synthetic", "test", subset=1500, seed=0)
    pixels = train.images[torch.from_numpy(train.labels != held_out)].flatten(1).float() / 255
    reducer = PCAReducer(dim=16, whiten=False, l2=False)
    space = reducer.reduce(pixels, seed=0)
    backend = make_backend(ClusterConfig(prior="dp", truncation=30), "cpu")
    fit = backend.fit(space.points, seed=0)
    prob = backend.novelty(fit.predictor, reducer.transform(test.images.flatten(1).float() / 255, space.state))
    flagged = (prob > backend.novelty_threshold).numpy()
    out = test.labels == held_out
    assert flagged[out].mean() >= 0.9 and flagged[~out].mean() <= 0.05


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
def test_predictive_density_is_the_normal_mixed_over_the_posterior(covariance, one_thread):
    """log p_k(x) against a Monte Carlo average of N(x | mu, Sigma) over (mu, Sigma) ~ q (torch.distributions)."""
    torch.manual_seed(0)
    d, draws = 2, 200_000
    m, kappa = torch.tensor([[0.5, -1.0]], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)
    if covariance == "full":
        dof, scale = torch.tensor([6.0], dtype=torch.float64), torch.tensor([[[1.2, 0.0], [0.4, 0.7]]],
                                                                             dtype=torch.float64)
        precision = torch.distributions.Wishart(dof[0], scale_tril=torch.linalg.cholesky(
            torch.cholesky_inverse(scale[0]))).sample((draws,))                  # Lambda ~ W(Psi^{-1}, nu)
    else:
        shape = (1, d) if covariance == "diag" else (1,)
        dof, scale = torch.full(shape, 4.0, dtype=torch.float64), torch.full(shape, 2.5, dtype=torch.float64)
        lam = torch.distributions.Gamma(dof[0], scale[0]).sample((draws,))       # (draws, d) or (draws,)
        precision = torch.diag_embed(lam if covariance == "diag" else lam[:, None].expand(draws, d))
    cov = torch.linalg.inv(precision)
    mu = torch.distributions.MultivariateNormal(m[0], covariance_matrix=cov / kappa).sample()
    x = torch.tensor([[0.0, 0.0], [1.5, -2.0], [3.0, 1.0]], dtype=torch.float64)
    mc = torch.stack([torch.distributions.MultivariateNormal(mu, covariance_matrix=cov).log_prob(p).exp().mean()
                      for p in x]).log()
    ours = log_predictive(covariance, {"m": m, "kappa": kappa, "dof": dof, "scale": scale}, x)[:, 0]
    assert torch.allclose(ours, mc, atol=0.03), (ours, mc)


def _three_blobs(n_per: int = 60, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    return torch.cat([c + torch.randn(n_per, 2, generator=g) for c in centres])


def test_the_new_component_weight_when_every_component_is_live(one_thread):
    """T = 3 components for three separated blobs: every slot is live, the last one included. Its weight is the
    whole tail of the sticks; the new component takes the part E[1 - v] = E[alpha] / (1 + N_last + E[alpha]) of it
    (as the untruncated DP would), so the weights and the new one sum to 1. Before, the new weight was weights[-1]
    itself, counting the last component twice (sum 1 + weights[-1])."""
    from bayes_dc.clustering.dpgmm import DPGMM
    model = DPGMM(truncation=3, covariance="diag", moves=False, min_size=0.0).fit(_three_blobs(), seed=0)
    predictor = model.predictor()
    assert predictor["live"].tolist() == [0, 1, 2]
    pred = predictor["predictive"]
    new = math.exp(pred["log_new_weight"])
    tail, n_last = float(model.weights_[-1]), float(model.counts_[-1])
    assert new == pytest.approx(tail * model.alpha_ / (1.0 + n_last + model.alpha_), rel=1e-9)
    assert float(pred["log_weights"].exp().sum()) + new == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(pred["log_weights"][:2].exp().numpy(), model.weights_[:2].double().numpy(), rtol=1e-9)


def test_the_warm_state_holds_the_responsibilities_the_labels_come_from(one_thread):
    """The backend's final E-step gives the labels; the warm state for the next round must carry that same E-step
    (before, it carried the responsibilities from before the fit's last M-step)."""
    backend = make_backend(ClusterConfig(prior="dp", truncation=10, covariance="diag"), "cpu")
    fit = backend.fit(_three_blobs(80) + 0.5 * torch.randn(240, 2, generator=torch.Generator().manual_seed(1)),
                      seed=0)
    values, index = fit.state["resp_values"], fit.state["resp_index"]
    np.testing.assert_array_equal(index.numpy(), fit.resp_index)
    np.testing.assert_array_equal(values.numpy(), fit.resp_values)
    np.testing.assert_array_equal(index[:, 0].numpy(), fit.labels)
    again = backend.fit(_three_blobs(80) + 0.5 * torch.randn(240, 2, generator=torch.Generator().manual_seed(1)),
                        seed=0, warm_state=fit.state)   # the state is a valid warm start
    assert np.isfinite(again.objective)
