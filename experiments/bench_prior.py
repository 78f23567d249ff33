#!/usr/bin/env python
"""Benchmark: how preprocessing and the prior decide the DP-GMM's number of clusters on real features.

Extracts trunk features of Fashion-MNIST train once (a random-init trunk, or the trunk of a run's
``last.pt`` with ``--run-dir``), then fits the DP-GMM (CAVI, cold) for every combination of PCA dimension,
whitening, prior strength and alpha, and prints one Markdown table: K_active, K_eff, NMI, ACC vs classes,
iterations and seconds. ``design.md`` ("Priors and preprocessing decide K") asks for exactly this.

    python experiments/bench_prior.py --subset 10000 --width 16                 # CPU, minutes
    python experiments/bench_prior.py --device cuda --width 64                  # GPU, full 60,000
    python experiments/bench_prior.py --run-dir runs/my-run --pca-dims 32 64    # features of a trained trunk
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import fmnist_trunk_features  # noqa: E402

from bayes_dc import metrics  # noqa: E402
from bayes_dc.clustering.dpgmm import DPGMMBackend  # noqa: E402
from bayes_dc.config import Config  # noqa: E402
from bayes_dc.preprocess import Whitener  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--run-dir", default=None, help="take the trunk from this run's last.pt (its config decides "
                   "dataset subset and width)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pca-dims", type=int, nargs="+", default=[32, 64, 256])
    p.add_argument("--whiten", choices=["yes", "no", "both"], default="both")
    p.add_argument("--strengths", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    p.add_argument("--alphas", type=float, nargs="+", default=[1.0])
    p.add_argument("--truncation", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", default=None)
    return p.parse_args(argv)


def trunk_features(args) -> tuple[torch.Tensor, object, str]:
    subset, width, note, state = args.subset, args.width, f"random-init vgg-small width {args.width}", None
    if args.run_dir:
        ckpt = torch.load(Path(args.run_dir) / "last.pt", map_location="cpu", weights_only=False)
        run_cfg = Config.from_dict(ckpt["config"])
        subset, width = run_cfg.data.subset, run_cfg.width
        state = {k[len("trunk."):]: v for k, v in ckpt["model"].items() if k.startswith("trunk.")}
        note = f"trunk of {args.run_dir} after {ckpt['state']['epoch']} epochs"
    feats, data = fmnist_trunk_features(subset=subset, width=width, device=args.device, seed=args.seed,
                                        data_root=args.data_root, trunk_state=state)
    return feats, data, note


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*max_iter.*")
    feats, data, note = trunk_features(args)
    whitens = {"yes": [True], "no": [False], "both": [True, False]}[args.whiten]
    lines = ["| PCA dim | whiten | prior strength | alpha | K_active | K_eff | NMI | ACC | iterations | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for dim, whiten in itertools.product(args.pca_dims, whitens):
        x = Whitener(dim=dim, whiten=whiten, l2=True).fit_transform(feats)
        for strength, alpha in itertools.product(args.strengths, args.alphas):
            t0 = time.perf_counter()
            r = DPGMMBackend(args.truncation, alpha=alpha, prior_strength=strength, device=args.device
                             ).fit(x, seed=args.seed)
            s = metrics.cluster_metrics(data.labels, r.labels, r.weights)
            lines.append(f"| {x.shape[1]} | {'yes' if whiten else 'no'} | {strength:g} | {alpha:g} | {r.k_active} | "
                         f"{r.k_eff:.1f} | {s['nmi']:.3f} | {s['acc']:.3f} | {r.n_iter} | "
                         f"{time.perf_counter() - t0:.1f} |")
            print(lines[-1], flush=True)
    header = (f"bench_prior: Fashion-MNIST train N={len(data)}, {note}, L2 after PCA, T={args.truncation}, "
              f"device={args.device}, seed={args.seed}")
    text = header + "\n\n" + "\n".join(lines)
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
