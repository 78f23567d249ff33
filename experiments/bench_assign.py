#!/usr/bin/env python
"""Benchmark: using a trained run. Assignment throughput, and novelty of a cluster the run never saw.

Part 1, throughput (``--part throughput``): trains (or reuses) short Fashion-MNIST runs, one per space / prior
in ``--variants``, loads each with ``bayes_dc.load_run`` and times, on the 10,000 test images in memory, in batches
of ``--batch-size`` with ``--threads`` threads:

* ``extract``: the trunk's features alone (the run's own feature extraction, the floor of any assignment);
* ``assign``: features -> clustering space (``Reducer.transform``) -> top-k responsibilities and novelty;
* ``assign.py``: ``experiments/assign.py`` streaming the same images from a folder of PNG files (decoding included);
* ``agree``: the share of the run's training images that ``assign`` puts in their final cluster (the last
  snapshot, ``clusters/round_*.npz``).

Part 2, novelty end to end (``--part novelty``): the ``synthetic`` images written as an image folder without
cluster 9, a short DP run on it (``--reduce pca``), then ``assign.py`` on a folder of test images of all 10
clusters: the share of held-out and held-in images flagged novel (P(new component) > 0.5).

    python experiments/bench_assign.py --threads 1                 # both parts, CPU
    python experiments/bench_assign.py --part novelty --threads 1

Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchlib import ROOT, launch


VARIANTS = {   # name -> run.py options besides the common ones
    "dp-umap": ["--prior", "dp", "--reduce", "umap"],
    "dp-pca": ["--prior", "dp", "--reduce", "pca", "--pca-dim", "32"],
    "kmeans-pca": ["--prior", "kmeans", "--k", "100", "--reduce", "pca"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["throughput", "novelty", "both"], default="both")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--subset", type=int, default=10000, help="training images of the throughput runs")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="timings per measurement; the fastest is kept")
    p.add_argument("--out-dir", default="runs/bench_assign")
    return p.parse_args(argv)


def _train(args, runs: list[tuple[str, list[str]]]) -> None:
    codes = launch(runs, args.out_dir)
    failed = [name for name, code in codes.items() if code != 0]
    if failed:
        sys.exit(f"runs failed: {failed} (see their logs in {args.out_dir})")


def _fastest(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _write_png_folder(images, folder: Path, labels=None) -> None:
    from PIL import Image

    if folder.exists():
        return
    tmp = folder.with_name(folder.name + ".tmp")
    for i, image in enumerate(images):
        sub = tmp / (f"c{labels[i]}" if labels is not None else "all")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(sub / f"{i:05d}.png")
    tmp.rename(folder)


def _assign_py(run_dir: Path, folder: Path, out: Path, args) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "experiments" / "assign.py"), str(run_dir), "--images", str(folder),
                    "--out", str(out), "--no-progress", "--threads", str(args.threads), "--batch-size",
                    str(args.batch_size)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def throughput(args) -> None:
    import faiss
    import torch

    from bayes_dc import load_run
    from bayes_dc.data import load_dataset
    from bayes_dc.loop.pipeline import load_split

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    common = ["--dataset", "fashion-mnist", "--subset", str(args.subset), "--width", str(args.width), "--epochs",
              str(args.epochs), "--eval-split", "none", "--threads", str(args.threads), "--no-figures"]
    _train(args, [(f"{v}-w{args.width}-n{args.subset}-e{args.epochs}", common + VARIANTS[v]) for v in args.variants])
    test = load_dataset("fashion-mnist", "test")
    folder = Path(args.out_dir) / "fmnist-test-png"
    _write_png_folder(test.images, folder)
    n, b = len(test), args.batch_size
    print(f"\nFashion-MNIST test ({n} images), CPU, {args.threads} thread(s), batch {b}, vgg-small width {args.width}; "
          f"images/s (fastest of {args.repeats})\n")
    print("| run | space | extract (img/s) | assign + novelty (img/s) | ratio | assign.py from PNGs (img/s) | ratio "
          "| agree |")
    print("|---|---|---|---|---|---|---|---|")
    for v in args.variants:
        run_dir = Path(args.out_dir) / f"{v}-w{args.width}-n{args.subset}-e{args.epochs}"
        run = load_run(run_dir)

        def extract():
            for s in range(0, n, b):
                run.features(test.images[s:s + b])

        def assign():
            for s in range(0, n, b):
                points = run.points(test.images[s:s + b])
                run.assign_points(points)
                run.novelty_points(points)

        t_extract, t_assign = _fastest(extract, args.repeats), _fastest(assign, args.repeats)
        t_cli = _assign_py(run_dir, folder, Path(args.out_dir) / f"{v}-test.csv", args)
        train = load_split(run.config, "train", run.config.data.subset)
        labels = np.concatenate([run.assign(train.images[s:s + b])[0] for s in range(0, len(train), b)])
        with np.load(sorted((run_dir / "clusters").glob("round_*.npz"))[-1]) as snapshot:
            agree = float((labels == snapshot["labels"]).mean())
        print(f"| {v} | {run.config.reduce} | {n / t_extract:,.0f} | {n / t_assign:,.0f} | {t_extract / t_assign:.2f} "
              f"| {n / t_cli:,.0f} | {t_extract / t_cli:.2f} | {agree:.4f} |", flush=True)


def novelty(args) -> None:
    from bayes_dc.data import load_dataset

    held_out = 9
    out = Path(args.out_dir)
    train = load_dataset("synthetic", "train", subset=3000, seed=0)
    keep = np.flatnonzero(train.labels != held_out)
    _write_png_folder(train.images[keep], out / "synthetic-train-no9", train.labels[keep])
    test = load_dataset("synthetic", "test", subset=2000, seed=0)
    _write_png_folder(test.images, out / "synthetic-test-png", test.labels)
    name = f"synthetic-no9-dp-pca-w{args.width}-e{args.epochs}"
    options = ["--dataset", "imagefolder", "--data-root", str(out / "synthetic-train-no9"), "--image-size", "28",
               "--prior", "dp", "--reduce", "pca", "--pca-dim", "16", "--width", str(args.width), "--epochs",
               str(args.epochs), "--eval-split", "none", "--threads", str(args.threads), "--no-figures"]
    _train(args, [(name, options)])
    csv_path = out / f"{name}-test.csv"
    _assign_py(out / name, out / "synthetic-test-png", csv_path, args)
    rows = list(csv.DictReader(csv_path.open()))
    is_out = np.array([r["path"].startswith(f"c{held_out}/") for r in rows])
    flagged = np.array([r["novel"] == "1" for r in rows])
    print(f"\nNovelty end to end: DP run ({args.epochs} epoch(s), width {args.width}, PCA-16) on 2,700 synthetic images "
          f"without cluster {held_out}; assign.py on 2,000 test images of all 10 clusters\n")
    print("| images | n | flagged novel |")
    print("|---|---|---|")
    print(f"| held-out cluster {held_out} | {is_out.sum()} | {flagged[is_out].mean():.1%} |")
    print(f"| the 9 training clusters | {(~is_out).sum()} | {flagged[~is_out].mean():.1%} |")


def novelty_in_space(args) -> None:
    """The same held-out cluster at the backend level, no training: pixel PCA-16 vs a UMAP-10 layout (its
    out-of-sample map interpolates between training points)."""
    import torch

    from bayes_dc.clustering import make_backend
    from bayes_dc.config.schema import ClusterConfig
    from bayes_dc.data import load_dataset
    from bayes_dc.spaces.pca import PCAReducer
    from bayes_dc.spaces.umap import UMAPReducer

    torch.set_num_threads(args.threads)
    held_out = 9
    train = load_dataset("synthetic", "train", subset=3000, seed=0)
    test = load_dataset("synthetic", "test", subset=2000, seed=0)
    pixels = train.images[torch.from_numpy(train.labels != held_out)].flatten(1).float() / 255
    new = test.images.flatten(1).float() / 255
    out = test.labels == held_out
    print(f"\nNovelty by space (backend level, no training): DP-GMM (T 30) fitted on the pixels of 2,700 synthetic "
          f"images without cluster {held_out}, scored on 2,000 test images\n")
    print("| space | K_active | held-out flagged | held-in flagged |")
    print("|---|---|---|---|")
    for name, reducer in (("PCA-16 (not whitened)", PCAReducer(dim=16, whiten=False, l2=False)),
                          ("PCA-50 -> UMAP-10", UMAPReducer(dim=10, pca_dim=50, n_neighbors=20))):
        space = reducer.reduce(pixels, seed=0)
        backend = make_backend(ClusterConfig(prior="dp", truncation=30), "cpu")
        fit = backend.fit(space.points, seed=0)
        flagged = (backend.novelty(fit.predictor, reducer.transform(new, space.state)) > 0.5).numpy()
        print(f"| {name} | {fit.k_active} | {flagged[out].mean():.1%} | {flagged[~out].mean():.1%} |", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.part in ("novelty", "both"):
        novelty_in_space(args)
        novelty(args)
    if args.part in ("throughput", "both"):
        throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
