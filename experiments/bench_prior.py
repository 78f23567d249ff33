#!/usr/bin/env python
"""Benchmark: what decides the DP-GMM's number of clusters -- the prior scale, kappa0, the covariance family, the
empirical-Bayes scale update -- on several kinds of features.

For each dataset in --data (features made once), fits the DP-GMM (CAVI, cold, moves on) for every combination of
covariance family, prior scale s (E[Sigma_k] = s x data covariance), kappa0 and scale update, and prints one
Markdown table: K_active, K_eff, NMI, ACC vs classes, the final s, iterations and seconds. Datasets:

* ``fashion-mnist``: Fashion-MNIST train trunk features (a random-init trunk, or the trunk of a run's ``last.pt``
  with ``--run-dir``), PCA to each of --pca-dims (whitened or not, --whiten), L2;
* ``fmnist-umap``: UMAP-10 of PCA-50 Fashion-MNIST test pixels (cached, see ``bench_cluster.py``);
* ``digits``: scikit-learn's 8x8 digits (1,797 images), PCA to each of --pca-dims;
* ``elongated``: 10 rotated Gaussians of condition number 25 (--n points, each of --pca-dims as d).

    python experiments/bench_prior.py --data fmnist-umap digits elongated --scales 0.03 0.1 0.3 1
    python experiments/bench_prior.py --data fashion-mnist --subset 10000 --width 16 --pca-dims 32 64
    python experiments/bench_prior.py --run-dir runs/my-run --pca-dims 32 64    # features of a trained trunk
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench_cluster import fmnist_umap, trunk_features as cached_trunk_features
from benchlib import fmnist_trunk_features

from bayes_dc.evaluation import metrics
from bayes_dc.clustering.dpgmm import DPGMMBackend
from bayes_dc.config.schema import Config
from bayes_dc.spaces.whiten import Whitener

DATA = ("fashion-mnist", "fmnist-umap", "digits", "elongated")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", choices=DATA, default=["fashion-mnist"])
    p.add_argument("--subset", type=int, default=None, help="fashion-mnist: first N training images")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--run-dir", default=None, help="take the trunk from this run's last.pt (its config decides "
                   "dataset subset and width)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pca-dims", type=int, nargs="+", default=[64], help="PCA dimensions (elongated: dimension d)")
    p.add_argument("--whiten", choices=["yes", "no", "both"], default="yes", help="fashion-mnist PCA whitening")
    p.add_argument("--n", type=int, default=20_000, help="elongated: points")
    p.add_argument("--covariances", nargs="+", default=["full"], choices=["full", "diag", "spherical"])
    p.add_argument("--scales", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0], help="prior scales s")
    p.add_argument("--kappa0s", type=float, nargs="+", default=[None], help="kappa0 values (default: the engine's)")
    p.add_argument("--scale-update", choices=["no", "yes", "both"], default="no")
    p.add_argument("--alphas", type=float, nargs="+", default=[1.0])
    p.add_argument("--truncation", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path("bench_out"))
    p.add_argument("--markdown", default=None)
    return p.parse_args(argv)


def load_checkpoint(path: Path) -> dict:
    """A run's ``last.pt`` loaded with weights_only=True: only tensors, containers, numpy arrays and the project's
    Targets record are allowed to be unpickled."""
    from bayes_dc.loop.targets import Targets
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32",
                                          "float64")]
    with torch.serialization.safe_globals([np.ndarray, np.dtype, core.multiarray._reconstruct, Targets, *dtypes]):
        return torch.load(path, map_location="cpu", weights_only=True)


def trunk_features(args) -> tuple[torch.Tensor, np.ndarray, str]:
    """Trunk features of Fashion-MNIST train: a random-init trunk (cached), or the trunk of --run-dir."""
    if not args.run_dir:
        feats, labels = cached_trunk_features(args.seed, args.device, args.data_root, args.width, args.cache,
                                              args.subset)
        return feats, labels, f"random-init vgg-small width {args.width}"
    ckpt = load_checkpoint(Path(args.run_dir) / "last.pt")
    run_cfg = Config.from_dict(ckpt["config"])
    state = {k[len("trunk."):]: v for k, v in ckpt["model"].items() if k.startswith("trunk.")}
    note = f"trunk of {args.run_dir} after {ckpt['state']['epoch']} epochs"
    feats, data = fmnist_trunk_features(subset=run_cfg.data.subset, width=run_cfg.width, device=args.device,
                                        seed=args.seed, data_root=args.data_root, trunk_state=state)
    return feats, np.asarray(data.labels), note


def elongated(n: int, d: int, k: int, seed: int, condition: float = 25.0) -> tuple[torch.Tensor, np.ndarray]:
    """k Gaussians with randomly rotated covariances of condition number ``condition``, centres on a sphere of
    radius 4 sqrt(d)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g)
    centres = centres / centres.norm(dim=1, keepdim=True) * 4.0 * d ** 0.5
    labels = torch.randint(k, (n,), generator=g)
    stds = torch.logspace(0, 0.5 * np.log10(condition), d)
    x = torch.empty(n, d)
    for j in range(k):
        rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        rows = (labels == j).nonzero()[:, 0]
        x[rows] = centres[j] + (torch.randn(len(rows), d, generator=g) * stds[torch.randperm(d, generator=g)]) @ rotation.T
    return x, labels.numpy()


def feature_sets(args):
    """Yield (data name, PCA dim or d, whiten, features (N, d), labels, note)."""
    whitens = {"yes": [True], "no": [False], "both": [True, False]}[args.whiten]
    for name in args.data:
        if name == "fashion-mnist":
            feats, labels, note = trunk_features(args)
            for dim, whiten in itertools.product(args.pca_dims, whitens):
                yield name, dim, whiten, Whitener(dim=dim, whiten=whiten, l2=True).fit_transform(feats), labels, note
        elif name == "fmnist-umap":
            x, labels = fmnist_umap(args.data_root, args.cache)
            yield name, x.shape[1], False, x, labels, "UMAP-10 of PCA-50 test pixels"
        elif name == "digits":
            from sklearn.datasets import load_digits
            digits = load_digits()
            pixels = torch.from_numpy(digits.data).float()
            for dim in args.pca_dims:
                x = Whitener(dim=min(dim, 63), whiten=False, l2=False).fit_transform(pixels)
                yield name, x.shape[1], False, x, digits.target, "scikit-learn digits, PCA"
        else:
            for dim in args.pca_dims:
                x, labels = elongated(args.n, dim, 10, args.seed)
                yield name, dim, False, x, labels, "10 rotated Gaussians, condition number 25"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    updates = {"no": [False], "yes": [True], "both": [False, True]}[args.scale_update]
    lines = ["| data | dim | whiten | covariance | prior scale | kappa0 | scale update | alpha | K_active | K_eff | NMI | "
             "ACC | final scale | iterations | seconds |", "|" + "---|" * 15]
    notes = []
    for name, dim, whiten, x, labels, note in feature_sets(args):
        notes.append(f"{name}: {note}, N={x.shape[0]}")
        for cov, scale, kappa0, update, alpha in itertools.product(args.covariances, args.scales, args.kappa0s,
                                                                    updates, args.alphas):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = DPGMMBackend(args.truncation, covariance=cov, prior_scale=scale, kappa0=kappa0,
                                 prior_scale_update=update, alpha=alpha, device=args.device).fit(x, seed=args.seed)
            s = metrics.cluster_metrics(labels, r.labels, r.weights)
            lines.append(f"| {name} | {dim} | {'yes' if whiten else 'no'} | {cov} | {scale:g} | "
                         f"{'default' if kappa0 is None else f'{kappa0:g}'} | {'yes' if update else 'no'} | {alpha:g} | "
                         f"{r.k_active} | {r.k_eff:.1f} | {s['nmi']:.3f} | {s['acc']:.3f} | "
                         f"{r.info['prior_scale']:.3g} | {r.n_iter} | {time.perf_counter() - t0:.1f} |")
            print(lines[-1], flush=True)
    header = (f"bench_prior: T={args.truncation}, device={args.device}, threads={torch.get_num_threads()}, "
              f"seed={args.seed}; " + "; ".join(dict.fromkeys(notes)))
    text = header + "\n\n" + "\n".join(lines)
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
