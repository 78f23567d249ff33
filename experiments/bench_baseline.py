#!/usr/bin/env python
"""Benchmark: the faiss k-means DeepCluster baseline on Fashion-MNIST (eval-protocol reference table).

Runs ``experiments/run.py --prior kmeans --k K`` for each K (in parallel with ``--jobs``, which suits one
GPU that a small trunk does not fill), then prints one Markdown table from the run directories:
NMI vs classes per round, NMI(t, t-1), kNN test accuracy, seconds per epoch and the clustering share,
plus two reference rows: the random-init trunk (round 0 of each run) and k-means on raw pixels.

    # CPU, reduced schedule (about 25 min on 2 cores)
    python experiments/bench_baseline.py --epochs 6 --subset 10000 --width 16 --ks 10 100
    # GPU, the reference schedule
    python experiments/bench_baseline.py --epochs 60 --ks 10 100 300 --jobs 3 --device cuda

``--table-only`` rebuilds the table from existing run directories without training.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchlib import launch

from bayes_dc.evaluation.report import fmt, summarize_run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", type=int, nargs="+", default=[10, 100, 300])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--subset", type=int, default=None, help="training images (default: all 60,000)")
    p.add_argument("--width", type=int, default=64, help="vgg-small width (64 = reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per run (set when --jobs > 1)")
    p.add_argument("--knn-every", type=int, default=5)
    p.add_argument("--out-dir", default="runs/bench_baseline")
    p.add_argument("--data-root", default=None)
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    return p.parse_args(argv)


def run_name(args, k: int) -> str:
    # Same names as bench_dcdp.py's km-kK variants, so both benchmarks can share (and reuse) these runs.
    return f"km-k{k}-w{args.width}-e{args.epochs}-n{args.subset or 60000}-s{args.seed}"


def launch_all(args) -> None:
    common = ["--dataset", "fashion-mnist", "--prior", "kmeans", "--pca-dim", "256", "--targets", "hard",
              "--head", "reset", "--epochs", str(args.epochs), "--width",
              str(args.width), "--seed", str(args.seed), "--device", args.device, "--knn-every", str(args.knn_every)]
    if args.subset and args.subset < 60000:
        common += ["--subset", str(args.subset)]
    if args.data_root:
        common += ["--data-root", args.data_root]
    if args.threads:
        common += ["--threads", str(args.threads)]
    launch([(run_name(args, k), common + ["--k", str(k)]) for k in args.ks], args.out_dir, args.jobs)


def raw_pixel_kmeans(args) -> dict:
    """k-means (k=10, faiss, niter 20) on raw pixels of the same training images: the floor to beat."""
    from bayes_dc.evaluation import metrics
    from bayes_dc.clustering.kmeans import KMeansBackend
    from bayes_dc.data import load_dataset

    subset = args.subset if args.subset and args.subset < 60000 else None
    ds = load_dataset("fashion-mnist", "train", root=args.data_root, subset=subset, seed=args.seed)
    x = ds.images.reshape(len(ds), -1).float() / 255.0
    result = KMeansBackend(k=10).fit(x, seed=args.seed)
    return metrics.cluster_metrics(ds.labels, result.labels)


def table(args) -> str:
    out = Path(args.out_dir)
    summaries = {k: summarize_run(out / run_name(args, k)) for k in args.ks}
    lines = ["| run | epochs | NMI vs classes (last) | ACC | purity | NMI(t,t-1) (last 5) | kNN test acc | "
             "s / epoch | clustering share |", "|---|---|---|---|---|---|---|---|---|"]
    first = next((s for s in summaries.values() if s), None)
    if first:
        lines.append(f"| random-init trunk (round 0, k={args.ks[0]}) | 0 | {fmt(first['nmi0'])} | "
                     f"{fmt(first['acc0'])} | – | – | {fmt(first['knn0'])} | – | – |")
    for k, s in summaries.items():
        if s is None:
            lines.append(f"| DeepCluster k-means k={k} | (no run) | | | | | | | |")
            continue
        lines.append(f"| DeepCluster k-means k={k} | {s['epochs_done']} | {fmt(s['nmi'])} | {fmt(s['acc'])} | "
                     f"{fmt(s['purity'])} | {fmt(s['nmi_prev'])} | {fmt(s['knn'])} | {fmt(s['epoch_s'], 1)} | "
                     f"{fmt(s['cluster_share'], 2)} |")
    raw = raw_pixel_kmeans(args)
    lines.append(f"| k-means k=10 on raw pixels | – | {fmt(raw['nmi'])} | {fmt(raw['acc'])} | {fmt(raw['purity'])} "
                 "| – | – | – | – |")
    lines += ["", "NMI vs classes per round (round 0 = random-init trunk; last = final trunk):", ""]
    for k, s in summaries.items():
        if s:
            lines.append(f"- k={k}: " + " ".join(fmt(v, 2) for v in s["nmi_curve"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not args.table_only:
        launch_all(args)
    text = table(args)
    header = (f"bench_baseline: epochs={args.epochs} subset={args.subset or 60000} width={args.width} "
              f"seed={args.seed} device={args.device} jobs={args.jobs} wall={time.time() - t0:.0f}s")
    print(header + "\n\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(header + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
