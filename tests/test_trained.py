"""Using a trained run: load_run, assign / novelty, experiments/assign.py and export.py, the standalone loader."""
import csv
import importlib.util
import json
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
    post = bayes_dc.load_run(runs["dp"]).posterior
    assert post["weights"].sum() + post["new_weight"] == pytest.approx(1.0, abs=1e-9)
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
                                          ({"config": {"cluster": {"no_such_option": 1}}}, "config")])
def test_a_run_from_an_incompatible_version_is_refused(runs, tmp_path, capsys, change, match):
    old = tmp_path / "old"
    old.mkdir()
    checkpoint = load_checkpoint(runs["kmeans"] / FINAL_CHECKPOINT)
    save_checkpoint({**checkpoint, **change}, old / FINAL_CHECKPOINT, keep_previous=False)
    _one_line_exit_2(capsys, [str(old), "--images", str(tmp_path), "--no-progress"], match)


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
