"""Smoke tests of the command-line scripts on tiny data: each must run and print/write what it promises."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from bayes_dc.data import load_dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))   # the bench scripts' tables (bench_dcdp.VARIANTS)
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def run_script(*args, timeout=300):
    """The scripts import the installed package (no sys.path edits of their own); PYTHONPATH puts this checkout
    first, so they run the bayes_dc under test even where the installed one is another checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_main(script: str, *args) -> None:
    """``experiments/<script>.py``'s main(args) in this process: no interpreter start and no second import of torch,
    faiss and numba's compiled code (run.py and linear_probe.py keep a subprocess each, for the entry points).
    The scripts set torch's and faiss's thread counts to ``--threads``; this process gets its own back."""
    import importlib

    import faiss
    import torch

    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        assert importlib.import_module(script).main([str(a) for a in args]) in (0, None)
    finally:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(faiss_threads)


def test_run_py_dp_tiny_writes_run_dir(tmp_path):
    out = run_script("experiments/run.py", "--dataset", "synthetic", "--subset", "300", "--eval-subset", "100",
                     "--prior", "dp", "--truncation", "30", "--width", "4", "--epochs", "2", "--pca-dim", "16",
                     "--reduce", "pca", "--threads", "1", "--out-dir", tmp_path, "--name", "smoke", "--no-progress")
    assert out.returncode == 0, out.stderr
    final = json.loads(out.stdout.strip().splitlines()[-1])
    d = tmp_path / "smoke"
    # The printed numbers are those of the final snapshot, recomputed here (T = 30: the 0.5 % active cut).
    with np.load(sorted((d / "clusters").glob("round_*.npz"))[-1]) as snap:
        classes = load_dataset("synthetic", "train", subset=300, seed=0).labels
        assert final["nmi"] == pytest.approx(normalized_mutual_info_score(classes, snap["labels"]), abs=1e-12)
        assert final["k_active"] == int((snap["weights"] >= 0.005).sum())
    assert (d / "lineage.jsonl").exists() and (d / "figures" / "rounds.png").exists()


def test_bench_cluster_tiny_prints_table(tmp_path):
    run_main("bench_cluster", "--n", "1500", "--d", "8", "--truncation", "20", "--clusters", "4", "--svi-steps", "2",
             "--svi-batch", "256", "--threads", "1", "--out", tmp_path / "t.md")
    table = (tmp_path / "t.md").read_text()
    for row in ("faiss k-means", "CAVI cold", "CAVI warm", "Pyro SVI", "BayesianGaussianMixture"):
        assert row in table


@pytest.mark.skipif(not FMNIST.exists(), reason="needs the Debian dataset-fashion-mnist package")
def test_bench_dcdp_and_baseline_tiny(tmp_path, capsys):
    common = ["--epochs", "1", "--subset", "300", "--width", "4", "--threads", "1", "--out-dir", tmp_path]
    # One variant: the table treats every variant alike, and a DP run.py run is test_run_py_dp_tiny's
    run_main("bench_dcdp", "--variants", "km-k10", "--truncation", "20", *common,
             "--markdown", tmp_path / "dcdp.md", "--extra", "--reduce", "pca")  # no UMAP fit per round
    lines = (tmp_path / "dcdp.md").read_text().splitlines()
    rows = [l for l in lines if l.startswith("| km-") or l.startswith("| dp-")]
    assert len(rows) == 1 and all("| 1 | 1 |" in r for r in rows)  # one seed, one epoch
    anchors = [l for l in lines if "raw pixels" in l or "random-init trunk" in l]
    assert len(anchors) == 4 and all("| 1 | 0 |" in a for a in anchors)  # one seed, no training
    capsys.readouterr()
    run_main("bench_baseline", "--ks", "10", *common, "--table-only")
    assert "DeepCluster k-means k=10 | 1 |" in capsys.readouterr().out  # reuses the km-k10 run made above


@pytest.mark.skipif(not FMNIST.exists(), reason="needs the Debian dataset-fashion-mnist package")
def test_bench_prior_tiny_one_row_per_setting(tmp_path):
    run_main("bench_prior", "--subset", "300", "--width", "4", "--pca-dims", "8", "--whiten", "both", "--scales",
             "0.1", "0.3", "--truncation", "10", "--threads", "1", "--cache", tmp_path, "--markdown", tmp_path / "p.md")
    rows = [l for l in (tmp_path / "p.md").read_text().splitlines() if l.startswith("| fashion-mnist | 8 |")]
    assert len(rows) == 4


@pytest.mark.skipif(not FMNIST.exists(), reason="needs the Debian dataset-fashion-mnist package")
def test_bench_k_tiny_headline_rows(tmp_path):
    run_main("bench_k", "--parts", "headline", "--max-n", "600", "--truncation", "15", "--no-sklearn", "--cache",
             tmp_path, "--out", tmp_path / "k.md")
    rows = [l for l in (tmp_path / "k.md").read_text().splitlines() if l.startswith("| UMAP-10 of test pixels | 600 |")]
    assert [r.split(" | ")[3] for r in rows] == ["DP-GMM full, moves on", "DP-GMM full, moves off",
                                                 "DP-GMM diag, moves on", "DP-GMM diag, moves off"]
    assert all(1 <= int(r.split(" | ")[4]) <= 15 for r in rows)        # K_active within the truncation


def test_linear_probe_command_scores_a_run(tmp_path):
    out = run_script("experiments/run.py", "--dataset", "synthetic", "--subset", "300", "--eval-subset", "100",
                     "--prior", "kmeans", "--k", "10", "--width", "4", "--epochs", "1", "--pca-dim", "16",
                     "--threads", "1", "--out-dir", tmp_path, "--name", "lp", "--no-progress", "--no-figures")
    assert out.returncode == 0, out.stderr
    out = run_script("experiments/linear_probe.py", tmp_path / "lp", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "lp" / "linear_probe.json").read_text())
    assert result["linear_probe_acc"] > 0.8 and result["test_images"] == 100  # synthetic clusters are separable
    missing = run_script("experiments/linear_probe.py", tmp_path / "nope")
    assert missing.returncode == 2 and "last.pt" in missing.stderr


def test_bench_space_tiny_rows_per_space_and_round(capsys):
    run_main("bench_space", "--synthetic", "1500", "--dim", "16", "--spaces", "kmeans", "pumap", "--warm-rounds", "1",
             "--truncation", "20", "--new", "100", "--threads", "1")
    stdout = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in stdout.splitlines() if line.startswith("| kmeans") or
            line.startswith("| pumap")]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("kmeans", "cold"), ("pumap", "cold"),
                                                            ("pumap", "warm 1")]
    assert rows[0][4].strip() == "1.0"                            # k-means is the baseline of the ratio column
    assert rows[-1][8].strip() != "–"                             # pumap maps and assigns new points


def test_bench_dcdp_variants_are_valid_configs_that_differ_from_their_baseline():
    """Every benchmark variant parses into a Config (a typo would only surface minutes into a grid), and each
    changes something: a variant equal to its baseline would put a duplicate row in the table."""
    import bench_dcdp
    from bayes_dc.config.cli import config_from_args

    configs = {name: config_from_args(list(args)) for name, args in bench_dcdp.VARIANTS.items()}
    for name, config in configs.items():
        assert config.cluster.prior == name.split("-")[0].replace("km", "kmeans"), name   # km-, dp-, dirichlet-
        baseline = configs["km-k10" if name.startswith("km-") else "dp-default"]
        assert name in ("km-k10", "dp-default") or config != baseline, name
    # the space ablation keeps DeepCluster's training and changes only the space (and k)
    umap, pca = configs["km-k100-umap"], configs["km-k100"]
    assert (umap.features.reduce, pca.features.reduce) == ("umap", "pca")
    assert umap.train == pca.train and umap.targets == pca.targets and umap.cluster == pca.cluster


def test_scripts_do_not_edit_sys_path():
    """experiments/ and paper_figs/ import the installed package; a sibling helper (benchlib, style) is found because
    a script's own folder is on sys.path when it runs. (export.py's docstring shows a user's sys.path line: not code.)"""
    import ast
    edits = []
    for script in sorted([*ROOT.glob("experiments/*.py"), *ROOT.glob("paper_figs/*.py")]):
        for node in ast.walk(ast.parse(script.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                edits.append(f"{script.relative_to(ROOT)}:{node.lineno}")
    assert not edits, f"sys.path used in {edits}; import bayes_dc from the installed package instead"
