#!/usr/bin/env python
"""Benchmark: the clustering step per round in each space, on the same features, against k-means DeepCluster's.

One set of features (Fashion-MNIST training images through a vgg-small trunk: random-init, or a trained run's
``--trunk RUN_DIR``; or the raw pixels with ``--pixels``), then for each space a cold round and ``--warm-rounds``
warm rounds on the same features, as the loop does when the trunk has not moved much:

- ``kmeans``: DeepCluster's step, whitened PCA-256 + L2 and faiss k-means (k = 10, 20 iterations): the baseline
  whose seconds every other row is divided by;
- ``umap + DP``: umap-learn's layout (PCA-50 -> 10-d; warm rounds start from the previous layout) + the DP-GMM;
- ``pumap + DP``: the parametric space (``bayes_dc.spaces.parametric``; warm rounds keep the encoder) + the DP-GMM;
- ``umap-distilled + DP`` (a diagnostic, cold round only): umap-learn's layout, then pumap's encoder regressed onto it
  (:func:`bayes_dc.spaces.parametric.distill_encoder`, 30 epochs): what an MLP on PCA-50 can reproduce of umap-learn's layout,
  which separates the encoder's capacity from how far its training on the UMAP loss gets;
and, for the spaces that map new points, the time to map and assign ``--new`` new images' features (one encoder
forward pass + one E-step).

    python experiments/bench_space.py --subset 20000 --threads 1            # CPU, random-init trunk
    python experiments/bench_space.py --trunk runs/bench_dcdp/dp-pumap-w16-n20000-s0 --threads 1
    python experiments/bench_space.py --synthetic 1281167 --dim 256 --device cuda --spaces pumap   # GPU at scale

Prints a Markdown table: seconds of the space and of the fit per round, their sum as a ratio to k-means', K_active,
NMI and ACC against the classes (none for synthetic features).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bayes_dc.evaluation import metrics
from bayes_dc.clustering.dpgmm import DPGMMBackend
from bayes_dc.clustering.kmeans import KMeansBackend
from bayes_dc.spaces.pca import PCAReducer
from bayes_dc.spaces.umap import UMAPReducer
from bayes_dc.evaluation.report import fmt
from bayes_dc.spaces.base import Reduction
from bayes_dc.spaces.parametric import (ParametricUMAPReducer, distill_encoder, new_encoder, output_whitening, project, scaled_pca_frame)
from bayes_dc.trained.load import trunk_state


class DistilledUMAP:
    """umap-learn's layout (N, 10) of the PCA-50, then an MLP (pumap's encoder) regressed onto it; the points are the
    MLP's whitened outputs. A diagnostic space, not a reducer of the toolkit (it needs umap-learn every round)."""

    def __init__(self, hidden: int = 128, steps: int = 3000):
        self.umap, self.hidden, self.steps = UMAPReducer(10, 50, 20), hidden, steps

    def reduce(self, x: torch.Tensor, *, seed: int, warm_state=None) -> Reduction:
        start = time.perf_counter()
        layout = self.umap.reduce(x, seed=seed).points.float()
        pcs = project(x, *scaled_pca_frame(x, 50))                               # pumap's encoder inputs
        target = (layout - layout.mean(0)) / layout.std(0)
        generator = torch.Generator().manual_seed(seed)
        encoder = new_encoder(pcs.shape[1], self.hidden, target.shape[1], generator)
        with torch.enable_grad():
            error = distill_encoder(encoder, pcs, target, steps=self.steps, lr=3e-3, generator=generator)
        with torch.no_grad():
            raw = encoder(pcs)
        out_mean, out_whiten = output_whitening(raw)
        return Reduction((raw - out_mean) @ out_whiten, None, time.perf_counter() - start, {"distill_error": error})


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", type=int, default=20000, help="Fashion-MNIST training images")
    p.add_argument("--width", type=int, default=16, help="vgg-small width of the trunk")
    p.add_argument("--trunk", default=None, help="a run directory whose last.pt trunk gives the features")
    p.add_argument("--pixels", action="store_true", help="cluster the raw pixels instead of trunk features")
    p.add_argument("--synthetic", type=int, default=None, help="N synthetic features (a 10-blob mixture) instead")
    p.add_argument("--dim", type=int, default=256, help="feature dimension of --synthetic")
    p.add_argument("--spaces", nargs="+", default=["kmeans", "umap", "pumap"],
                   choices=["kmeans", "umap", "pumap", "umap-distilled"])
    p.add_argument("--warm-rounds", type=int, default=2, help="warm rounds after the cold one")
    p.add_argument("--truncation", type=int, default=300)
    p.add_argument("--pumap-epochs", type=int, default=10, help="encoder epochs of pumap's cold round")
    p.add_argument("--pumap-warm-epochs", type=int, default=3, help="encoder epochs of pumap's warm rounds")
    p.add_argument("--pumap-hidden", type=int, default=128, help="hidden width of pumap's encoder")
    p.add_argument("--pumap-init", default="spectral", choices=["spectral", "random"],
                   help="pumap's cold encoder: regressed onto the graph's spectral embedding, or random weights")
    p.add_argument("--new", type=int, default=10000, help="new points mapped and assigned (the spaces that can)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def features(args) -> tuple[torch.Tensor, np.ndarray | None]:
    """(N, F) float32 features on ``args.device`` and their class labels (None for synthetic features)."""
    if args.synthetic:
        generator = torch.Generator().manual_seed(args.seed)
        centres = torch.randn(10, args.dim, generator=generator) * 3
        labels = torch.randint(0, 10, (args.synthetic,), generator=generator)
        return (centres[labels] + torch.randn(args.synthetic, args.dim, generator=generator)).to(args.device), \
            labels.numpy()
    from benchlib import fmnist_trunk_features
    from bayes_dc.data import load_dataset
    if args.pixels:
        data = load_dataset("fashion-mnist", "train", subset=args.subset, seed=args.seed)
        return (data.images.reshape(len(data), -1).float() / 255).to(args.device), data.labels
    state = None
    if args.trunk:
        model = torch.load(Path(args.trunk) / "last.pt", weights_only=True)["model"]
        state = trunk_state(model)
    feats, data = fmnist_trunk_features(subset=args.subset, width=args.width, device=args.device, seed=args.seed,
                                        trunk_state=state)
    return feats, data.labels


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        import faiss
        faiss.omp_set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    x, labels = features(args)
    device = torch.device(args.device)
    rows, baseline = [], None
    for space in args.spaces:
        if space == "kmeans":
            reducer, backend = PCAReducer(256, device=device), KMeansBackend(k=10)
        elif space == "umap":
            reducer, backend = UMAPReducer(10, 50, 20), DPGMMBackend(args.truncation, device=device)
        elif space == "umap-distilled":
            reducer, backend = DistilledUMAP(), DPGMMBackend(args.truncation, device=device)
        else:
            reducer = ParametricUMAPReducer(epochs=args.pumap_epochs, warm_epochs=args.pumap_warm_epochs,
                                            hidden=args.pumap_hidden, init=args.pumap_init, device=device)
            backend = DPGMMBackend(args.truncation, device=device)
        reduce_state, warm = None, None
        for round_idx in range(1 + (0 if space in ("kmeans", "umap-distilled") else args.warm_rounds)):
            t0 = time.perf_counter()
            reduction = reducer.reduce(x, seed=args.seed + round_idx, warm_state=reduce_state)
            t1 = time.perf_counter()
            result = backend.fit(reduction.points, seed=args.seed + round_idx, warm_state=warm)
            t2 = time.perf_counter()
            reduce_state, warm = reduction.state, result.state
            row = {"space": space, "round": "cold" if round_idx == 0 else f"warm {round_idx}",
                   "reduce_s": t1 - t0, "fit_s": t2 - t1, "k": result.k_active}
            if labels is not None:
                scores = metrics.cluster_metrics(labels, result.labels, result.weights)
                row.update(nmi=scores["nmi"], acc=scores["acc"])
            if space == "kmeans":
                baseline = t2 - t0
            rows.append(row)
        if space == "pumap" and args.new and result.predictor is not None:
            new = x[: args.new]
            t0 = time.perf_counter()
            points = reducer.transform(new, reduce_state)
            backend.responsibilities(result.predictor, points)
            rows[-1]["new_s"] = time.perf_counter() - t0
    lines = ["| space | round | space s | fit s | step / k-means step | K_active | NMI | ACC | map + assign "
             f"{args.new} new s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = (r["reduce_s"] + r["fit_s"]) / baseline if baseline else None
        lines.append(f"| {r['space']} | {r['round']} | {fmt(r['reduce_s'], 2)} | {fmt(r['fit_s'], 2)} | "
                     f"{fmt(ratio, 1)} | {r['k']} | {fmt(r.get('nmi'), 3)} | {fmt(r.get('acc'), 3)} | "
                     f"{fmt(r.get('new_s'), 3)} |")
    what = (f"synthetic N={args.synthetic} d={args.dim}" if args.synthetic else
            f"Fashion-MNIST {args.subset} {'pixels' if args.pixels else ('trunk ' + (args.trunk or 'random-init'))}")
    print(f"bench_space: {what} device={args.device} threads={args.threads} T={args.truncation} "
          f"pumap epochs cold/warm={args.pumap_epochs}/{args.pumap_warm_epochs} init={args.pumap_init} hidden={args.pumap_hidden}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
