#!/usr/bin/env python
"""Benchmark: DeepCluster-DP against the k-means DeepCluster on Fashion-MNIST, same trunk, epochs and seeds.

Variants are named ``km-k{K}`` (k-means baseline) and ``dp-{targets}-{warm start}-{relabel}[-keep]`` with
relabel ``r1`` (every epoch), ``r3`` (every 3 epochs) or ``ra`` (adaptive). ``--grid cpu`` is a sensible
subset for a 2-core CPU with a reduced schedule, ``--grid full`` the whole {hard, soft, multilabel} x
{none, init, prior} x {r1, r3, ra} grid (for a GPU); ``--variants`` picks any by name.

    python experiments/bench_dcdp.py --grid cpu --epochs 5 --subset 10000 --width 16 --jobs 2 --threads 1
    python experiments/bench_dcdp.py --grid full --epochs 60 --jobs 4 --device cuda --seeds 0 1 2

Prints one Markdown table (mean ± std over seeds when several): NMI, ACC, ARI vs classes at the end,
K_active at the end, kNN test accuracy, NMI(t, t-1), relabels, seconds per epoch and the clustering share.
Finished runs are reused, interrupted ones resumed (``--table-only`` just rebuilds the table).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

from benchlib import ROOT, launch

sys.path.insert(0, str(ROOT))

from bayes_dc.report import fmt, mean_spread, summarize_run  # noqa: E402

RELABEL_ARGS = {"r1": ["--relabel-every", "1"], "r3": ["--relabel-every", "3"], "ra": ["--relabel", "adaptive"]}
CPU_GRID = ["km-k10", "km-k100", "dp-hard-init-r1", "dp-hard-none-r1", "dp-soft-init-r1", "dp-multilabel-init-r1",
            "dp-soft-prior-r1", "dp-hard-init-r3", "dp-hard-init-ra", "dp-hard-init-r1-keep"]


def full_grid() -> list[str]:
    dp = [f"dp-{t}-{w}-{r}" for t, w, r in itertools.product(("hard", "soft", "multilabel"),
                                                             ("none", "init", "prior"), RELABEL_ARGS)]
    return ["km-k10", "km-k100"] + dp + ["dp-soft-init-r1-keep", "dp-hard-init-r1-keep"]


def variant_args(name: str, truncation: int, km_pca: int = 256, dp_pca: int = 64) -> list[str]:
    """run.py arguments for a variant name (see module docstring).

    Each backend gets its own PCA dimension: 256 is DeepCluster's (the faithful baseline); the DP-GMM
    collapses to 1-3 components on 256 whitened dimensions of these features (BENCHMARKS.md), so DP
    variants default to 64.
    """
    parts = name.split("-")
    if parts[0] == "km":
        return ["--prior", "kmeans", "--k", parts[1][1:], "--targets", "hard", "--head", "reset",
                "--pca-dim", str(km_pca)]
    if parts[0] != "dp" or len(parts) not in (4, 5) or parts[3] not in RELABEL_ARGS:
        raise ValueError(f"bad variant name {name!r}: expected km-kK or dp-TARGETS-WARM-(r1|r3|ra)[-keep]")
    return ["--prior", "dp", "--truncation", str(truncation), "--targets", parts[1], "--warm-start", parts[2],
            *RELABEL_ARGS[parts[3]], "--head", "keep" if parts[-1] == "keep" else "reset", "--pca-dim", str(dp_pca)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=["cpu", "full"], default="cpu")
    p.add_argument("--variants", nargs="+", default=None, help="explicit variant names (overrides --grid)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--subset", type=int, default=10000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--truncation", type=int, default=300)
    p.add_argument("--km-pca-dim", type=int, default=256, help="PCA dimension for k-means runs")
    p.add_argument("--dp-pca-dim", type=int, default=64, help="PCA dimension for DP runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per run (set when --jobs > 1)")
    p.add_argument("--knn-every", type=int, default=3)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further run.py arguments for every run")
    p.add_argument("--out-dir", default="runs/bench_dcdp")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--markdown", default=None)
    return p.parse_args(argv)


def run_name(args, variant: str, seed: int) -> str:
    return f"{variant}-w{args.width}-e{args.epochs}-n{args.subset or 60000}-s{seed}"


def main(argv=None) -> int:
    args = parse_args(argv)
    variants = args.variants or (CPU_GRID if args.grid == "cpu" else full_grid())
    common = ["--dataset", "fashion-mnist", "--epochs", str(args.epochs), "--width", str(args.width),
              "--device", args.device, "--knn-every", str(args.knn_every)]
    if args.subset and args.subset < 60000:
        common += ["--subset", str(args.subset)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    runs = [(run_name(args, v, s), common + variant_args(v, args.truncation, args.km_pca_dim, args.dp_pca_dim) + ["--seed", str(s)] + args.extra)
            for v in variants for s in args.seeds]
    t0 = time.time()
    if not args.table_only:
        launch(runs, args.out_dir, args.jobs)
    rows = []
    for v in variants:
        sums = [summarize_run(Path(args.out_dir) / run_name(args, v, s)) for s in args.seeds]
        sums = [s for s in sums if s]
        row = {"variant": v, "seeds": len(sums)}
        for key in ("nmi", "acc", "ari", "k_active", "knn", "nmi_prev", "relabels", "epoch_s", "cluster_share"):
            row[key] = mean_spread([s[key] for s in sums])
        row["epochs"] = min((s["epochs_done"] for s in sums), default=0)
        rows.append(row)

    def cell(pair, digits=3):
        mean, spread = pair
        return fmt(mean, digits) + (f" ± {fmt(spread, digits)}" if spread is not None else "")

    lines = ["| variant | seeds | epochs | NMI | ACC | ARI | K_active | kNN acc | NMI(t,t-1) | relabels | s / epoch "
             "| clustering share |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seeds']} | {r['epochs']} | {cell(r['nmi'])} | {cell(r['acc'])} | "
                     f"{cell(r['ari'])} | {cell(r['k_active'], 1)} | {cell(r['knn'])} | {cell(r['nmi_prev'])} | "
                     f"{cell(r['relabels'], 1)} | {cell(r['epoch_s'], 1)} | {cell(r['cluster_share'], 2)} |")
    header = (f"bench_dcdp: epochs={args.epochs} subset={args.subset or 60000} width={args.width} "
              f"T={args.truncation} pca(km/dp)={args.km_pca_dim}/{args.dp_pca_dim} seeds={args.seeds} device={args.device} jobs={args.jobs} "
              f"wall={time.time() - t0:.0f}s")
    text = header + "\n\n" + "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
