#!/usr/bin/env python
"""What decides the DP-GMM's number of clusters: K_active and NMI vs N, vs d, per covariance family, with and
without moves, on Fashion-MNIST pixels (PCA and UMAP) and on trunk features, next to scikit-learn's
``BayesianGaussianMixture`` (full, DP) on the same embedding. Prints Markdown tables (and writes them to --out).

    python experiments/bench_k.py                              # every part, 1 thread (about 20-30 min on 2 cores)
    python experiments/bench_k.py --parts headline n --threads 1

Parts:
- ``headline``: UMAP-10 of the 10,000 Fashion-MNIST **test** images (PCA-50 first, 20 neighbours, min_dist 0,
  seed 0; the eval protocol's no-training baseline): the DP-GMM (T = 100) against scikit-learn's BGM full with its
  default prior, which the protocol measured at K 18 / NMI 0.633. Goal: K_active 8-20, NMI >= scikit-learn's,
  >= 20x faster.
- ``n``: one UMAP-10 embedding of the 60,000 **train** images, seeded subsamples of N = 10k / 30k / 60k. Goal: K at
  60k within 1.5x of K at 10k.
- ``d``: the 20,000-image train subsample in whitened PCA-d (d = 8, 16, 32, 64; DeepCluster's preprocessing,
  without L2) and UMAP-d (d = 5, 10, 20).
- ``trunk``: features of a random-init vgg-small trunk (width 16) of the 60,000 train images: whitened PCA-32 + L2
  (the k-means baseline's kind of space, at a dimension full covariances can afford) and UMAP-10.

Embeddings are computed with the project's own spaces (``bayes_dc.spaces``) and cached in ``--cache``.
scikit-learn runs with ``n_components = T``, ``weight_concentration_prior_type="dirichlet_process"``,
``max_iter 100``, k-means init, its default priors (as the eval protocol's baseline; its bound is not comparable
to ours, so ELBOs are not shown — ``bench_cluster.py`` compares bounds under one prior).
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

PARTS = ("headline", "n", "d", "trunk")


def cached_array(path: Path, make) -> np.ndarray:
    if path.exists():
        return np.load(path)
    array = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return array


def pixels(split: str, max_n: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Fashion-MNIST pixels (N, 784) in [0, 1] and labels; ``max_n``: a seeded subset (smoke runs)."""
    from bayes_dc.data import load_dataset

    data = load_dataset("fashion-mnist", split, subset=max_n, seed=0)
    return data.images.reshape(len(data), -1).float() / 255.0, np.asarray(data.labels)


def umap_of(x: torch.Tensor, dim: int, cache: Path, name: str) -> np.ndarray:
    from bayes_dc.spaces.umap import UMAPReducer

    return cached_array(cache / f"{name}_umap{dim}.npy",
                        lambda: UMAPReducer(dim=dim, pca_dim=50, n_neighbors=20).reduce(x, seed=0).points.numpy())


def trunk_features(cache: Path, width: int = 16) -> np.ndarray:
    def make():
        from benchlib import fmnist_trunk_features

        feats, _ = fmnist_trunk_features(width=width, seed=0)
        return feats.numpy()

    return cached_array(cache / f"trunk_w{width}_train.npy", make)


def subsample(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def fit_ours(x: np.ndarray, covariance: str, moves: str, truncation: int) -> dict:
    backend = DPGMMBackend(truncation, covariance=covariance, moves=moves)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = backend.fit(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), seed=0)
    return {"labels": result.labels, "weights": result.weights, "seconds": result.seconds}


def fit_sklearn(x: np.ndarray, truncation: int) -> dict:
    from sklearn.mixture import BayesianGaussianMixture

    bgm = BayesianGaussianMixture(n_components=truncation, covariance_type="full",
                                  weight_concentration_prior_type="dirichlet_process", max_iter=100, random_state=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bgm.fit(x.astype(np.float64))
    return {"labels": bgm.predict(x.astype(np.float64)), "weights": bgm.weights_,
            "seconds": time.perf_counter() - start}


METHODS = [("full", "all"), ("full", "none"), ("diag", "all"), ("diag", "none")]


def rows_for(space: str, x: np.ndarray, labels: np.ndarray, truncation: int, sklearn: bool) -> list[dict]:
    rows = []
    for covariance, moves in METHODS:
        fit = fit_ours(x, covariance, moves, truncation)
        rows.append({"space": space, "n": len(x), "d": x.shape[1],
                     "method": f"DP-GMM {covariance}, moves {'on' if moves == 'all' else 'off'}", **fit})
    if sklearn:
        rows.append({"space": space, "n": len(x), "d": x.shape[1], "method": "scikit-learn BGM full",
                     **fit_sklearn(x, truncation)})
    for row in rows:
        scores = metrics.cluster_metrics(labels, row.pop("labels"), row.pop("weights"))
        row.update({k: scores[k] for k in ("nmi", "acc", "k_active", "k_eff")})
        print(f"  {row['space']:<24} N={row['n']:<6} {row['method']:<28} K={row['k_active']:<4} "
              f"NMI={row['nmi']:.3f} {row['seconds']:.1f}s", flush=True)
    return rows


def table(rows: list[dict], baseline: str = "scikit-learn BGM full") -> str:
    lines = ["| space | N | d | method | K_active | K_eff | NMI | ACC | seconds | sklearn s / ours s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = [q for q in rows if q["space"] == r["space"] and q["n"] == r["n"] and q["method"] == baseline]
        speed = f"{ref[0]['seconds'] / r['seconds']:.1f}x" if ref and r["method"] != baseline else "–"
        lines.append(f"| {r['space']} | {r['n']} | {r['d']} | {r['method']} | {r['k_active']} | {r['k_eff']:.1f} | "
                     f"{r['nmi']:.3f} | {r['acc']:.3f} | {r['seconds']:.1f} | {speed} |")
    return "\n".join(lines)


def k_drift(rows: list[dict]) -> str:
    """K at the largest N over K at the smallest N, per method (goal: within 1.5x)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        by_n = sorted((r["n"], r["k_active"]) for r in rows if r["method"] == method)
        if len(by_n) > 1:
            out.append(f"- {method}: K {by_n[0][1]} at N={by_n[0][0]} -> {by_n[-1][1]} at N={by_n[-1][0]} "
                       f"({by_n[-1][1] / max(by_n[0][1], 1):.2f}x)")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--truncation", type=int, default=100, help="T for every fit (scikit-learn: n_components)")
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads")
    p.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn rows (the slow ones)")
    p.add_argument("--cache", type=Path, default=Path("bench_out/emb"), help="folder of cached embeddings")
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this Markdown file")
    p.add_argument("--max-n", type=int, default=None, help="headline part only: a seeded subset of the test images "
                   "(smoke runs)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    sklearn, t = not args.no_sklearn, args.truncation
    sections = [f"bench_k: T={t}, seed 0, {args.threads} thread(s), torch {torch.__version__}"]
    with threadpool_limits(args.threads):
        if "headline" in args.parts:
            x, labels = pixels("test", args.max_n)
            name = "pixels_test" if args.max_n is None else f"pixels_test_n{args.max_n}"
            rows = rows_for("UMAP-10 of test pixels", umap_of(x, 10, args.cache, name), labels, t, sklearn)
            sections += ["### UMAP-10 of the 10,000 test images (the protocol's no-training baseline)", table(rows)]
        if {"n", "d"} & set(args.parts):
            x_train, labels_train = pixels("train")
        if "n" in args.parts:
            emb = umap_of(x_train, 10, args.cache, "pixels_train")
            rows = []
            for n in (10_000, 30_000, 60_000):
                idx = subsample(len(emb), n)
                rows += rows_for("UMAP-10 of train pixels", emb[idx], labels_train[idx], t, sklearn)
            sections += ["### K vs N (one UMAP-10 embedding of the 60,000 train images, seeded subsamples)",
                         table(rows), k_drift(rows)]
        if "d" in args.parts:
            from bayes_dc.spaces.whiten import Whitener

            idx = subsample(len(x_train), 20_000)
            rows = []
            for d in (8, 16, 32, 64):
                white = Whitener(dim=d, whiten=True, l2=False).fit_transform(x_train[idx]).numpy()
                rows += rows_for(f"whitened PCA-{d} of pixels", white, labels_train[idx], t, sklearn and d <= 16)
            for d in (5, 10, 20):
                emb = umap_of(x_train, d, args.cache, "pixels_train")[idx]
                rows += rows_for(f"UMAP-{d} of pixels", emb, labels_train[idx], t, False)
            sections += ["### K vs d (20,000 train images)", table(rows)]
        if "trunk" in args.parts:
            from bayes_dc.spaces.whiten import Whitener

            feats = torch.from_numpy(trunk_features(args.cache))
            labels_train = pixels("train")[1]
            rows = rows_for("trunk w16, whitened PCA-32 + L2",
                            Whitener(dim=32, whiten=True, l2=True).fit_transform(feats).numpy(), labels_train, t, False)
            rows += rows_for("trunk w16, UMAP-10", umap_of(feats, 10, args.cache, "trunk_w16_train"), labels_train, t,
                             sklearn)
            sections += ["### Random-init trunk features (60,000 train images)", table(rows)]
    text = "\n\n".join(sections)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
