#!/usr/bin/env python
"""Scale benchmarks: the data path (a), the DP step at ImageNet size (b), several processes (c).

    python experiments/bench_scale.py --part a                       # 100,000 JPEGs, 64 px, 10 classes
    python experiments/bench_scale.py --part a --sizes 10000 30000 100000 --workers 0 2 --markdown out.md

Part (a), the data path on a generated image folder (made once into ``--cache``, default
``bench_out/scale_images/``; the time it took is printed and kept in ``--cache/generated.json``):

* streaming throughput, images/s, of ``StreamingImageFolder.eval_batches`` (decode + centre crop + resize)
  and ``train_batches(augment=True)`` (decode + random-resized crop + flip) for each ``--workers``;
* peak memory vs N: every (N, workers) runs in a fresh process over a folder of exactly N images (symlinks
  into the cache), so its peak RSS (``ru_maxrss``) belongs to that N alone. Streaming must be flat in N;
  the table also gives what the uint8 images would take in memory;
* ``features.extract_features_to_memmap`` with a small trunk (vgg-small, width 4, 512-d features) over the
  N images, then ``preprocess.Whitener`` fitted and applied on ``torch.from_numpy`` of the memmap: times,
  peak RSS, and peak anonymous memory (RssAnon; the mapping's pages are page cache and count in RssFile).

Part (b), the DP step on 1,281,167 synthetic points (T = 300 and 3,000 at d = 256 diagonal, full covariance at a
lower d): time, iterations, K_active, peak RSS, and faiss k-means (k = T, as many iterations) as the baseline
measured in the same process. Part (c), torchrun with 1 vs 2 processes on the CPU on a small real run (wall-clock,
results side by side).

    python experiments/bench_scale.py --part b --dp-settings 300:diag:256 3000:diag:256 300:full:32
    python experiments/bench_scale.py --part c --subset 10000 --epochs 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CLASSES = 10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["a", "b", "c"], default="a", help="which benchmark")
    p.add_argument("--cache", type=Path, default=ROOT / "bench_out" / "scale_images",
                   help="where the generated JPEGs live (made once, reused)")
    p.add_argument("--image-px", type=int, default=64, help="side of the generated JPEGs, pixels")
    p.add_argument("--image-size", type=int, default=None, help="output side S of the batches (default: --image-px)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000], help="values of N")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads in each measuring process")
    p.add_argument("--tables", nargs="+", choices=["data", "extract"], default=["data", "extract"],
                   help="which part (a) measurements to make")
    p.add_argument("--malloc-mmap-threshold", type=int, default=None,
                   help="set glibc's MALLOC_MMAP_THRESHOLD_ (bytes) in the measuring processes: a fixed threshold "
                        "stops glibc from serving ever larger freed blocks from its heaps, whose fragmentation "
                        "otherwise makes RssAnon wander by a few hundred MiB over a long pass")
    p.add_argument("--points", type=int, default=1_281_167, help="(b) points (ImageNet train: 1,281,167)")
    p.add_argument("--dp-settings", nargs="+", default=["300:diag:256", "3000:diag:256", "300:full:32"],
                   help="(b) T:covariance:d of each DP fit")
    p.add_argument("--dp-iters", type=int, default=10, help="(b) most CAVI iterations per fit")
    p.add_argument("--true-clusters", type=int, default=1000, help="(b) clusters of the generated points")
    p.add_argument("--priors", nargs="+", choices=["kmeans", "dp"], default=["kmeans", "dp"],
                   help="(c) clustering backends of the torchrun runs")
    p.add_argument("--subset", type=int, default=10_000, help="(c) Fashion-MNIST training images")
    p.add_argument("--epochs", type=int, default=2, help="(c) epochs per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)   # internal: one measurement, in a child process
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------
# The image folder
# --------------------------------------------------------------------------------------------------


def render(index: np.ndarray, labels: np.ndarray, px: int, rng: np.random.Generator) -> np.ndarray:
    """(n, px, px, 3) uint8: a class-specific coloured grating (orientation, frequency, hue), shifted, noisy."""
    y, x = np.mgrid[0:px, 0:px].astype(np.float32) / px                       # (px, px)
    angle = labels * np.pi / CLASSES                                           # (n,)
    freq = 2.0 + (labels % 4)
    phase = rng.uniform(0, 2 * np.pi, size=len(index))
    wave = np.sin(2 * np.pi * freq[:, None, None] * (np.cos(angle)[:, None, None] * x
                                                      + np.sin(angle)[:, None, None] * y) + phase[:, None, None])
    hue = np.stack([np.cos(angle), np.sin(angle), np.cos(angle + 2.0)], -1)    # (n, 3)
    image = 128 + 90 * wave[..., None] * hue[:, None, None, :] + rng.normal(0, 12, size=(len(index), px, px, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def generate(cache: Path, n: int, px: int, seed: int) -> float:
    """Write n JPEGs into cache/all/class_k/ once; return the seconds it took (0 if they already exist)."""
    from PIL import Image

    stamp = cache / "generated.json"
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if info["n"] >= n and info["px"] == px:
            return 0.0
    t0 = time.perf_counter()
    for k in range(CLASSES):
        (cache / "all" / f"class_{k}").mkdir(parents=True, exist_ok=True)
    chunk = 1000
    for start in range(0, n, chunk):
        index = np.arange(start, min(start + chunk, n))
        labels = index % CLASSES
        rng = np.random.default_rng([seed, start])
        for i, label, image in zip(index, labels, render(index, labels, px, rng)):
            Image.fromarray(image).save(cache / "all" / f"class_{label}" / f"img_{i:07d}.jpg", quality=90)
    seconds = time.perf_counter() - t0
    stamp.write_text(json.dumps({"n": n, "px": px, "seconds": seconds}) + "\n")
    return seconds


def view(cache: Path, n: int) -> Path:
    """A folder holding exactly the first n images (symlinks), so a run over it lists n files, not all."""
    root = cache / f"n{n}"
    if (root / ".complete").exists():
        return root
    for i in range(n):
        name = Path(f"class_{i % CLASSES}") / f"img_{i:07d}.jpg"
        link = root / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(Path("..") / ".." / "all" / name)
    (root / ".complete").write_text("")
    return root


# --------------------------------------------------------------------------------------------------
# Measuring (in a child process per job)
# --------------------------------------------------------------------------------------------------


class MemorySampler:
    """Samples /proc/self/status every 20 ms: peak VmRSS, RssAnon and RssFile in MiB (Linux)."""

    def __init__(self):
        self.peak = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]) / 1024)
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._read()

    def __enter__(self) -> "MemorySampler":
        self._read()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()


def max_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024   # Linux reports KiB


def job_data(spec: dict) -> dict:
    """Open the folder, one eval pass and one augmented train pass; throughput and peak memory."""
    import torch

    from bayes_dc.data import load_dataset

    torch.set_num_threads(spec["threads"])
    with MemorySampler() as mem:
        t0 = time.perf_counter()
        ds = load_dataset("imagefolder", root=spec["root"], image_size=spec["size"], streaming="always",
                          num_workers=spec["workers"])
        ds.mean_std()
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        seen = sum(len(b) for b in ds.eval_batches(spec["batch_size"]))
        t_eval = time.perf_counter() - t0
        gen = torch.Generator().manual_seed(spec["seed"])
        order = torch.randperm(len(ds), generator=gen)
        t0 = time.perf_counter()
        trained = sum(len(b) for b in ds.train_batches(order, spec["batch_size"], gen, augment=True))
        t_train = time.perf_counter() - t0
    assert seen == trained == len(ds) == spec["n"], (seen, trained, len(ds), spec["n"])
    return {"open_s": t_open, "eval_per_s": seen / t_eval, "train_per_s": trained / t_train,
            "rss_mib": max_rss_mib(resource.RUSAGE_SELF), "anon_mib": mem.peak["RssAnon"],
            "worker_rss_mib": max_rss_mib(resource.RUSAGE_CHILDREN) if spec["workers"] else None,
            "in_memory_mib": ds.nbytes / 2**20}


def job_extract(spec: dict) -> dict:
    """Features of every image into a .npy memmap, then a Whitener fitted and applied on the memmap.

    Memory is sampled per phase: the extraction writes with pwrite (page cache, outside RSS); the Whitener
    reads through the mapping, whose pages then count in RssFile (reclaimable page cache), and allocates
    float64 chunk temporaries of at most ``preprocess._CHUNK_ELEMENTS`` elements.
    """
    import torch

    from bayes_dc.data import load_dataset
    from bayes_dc.models.features import extract_features_to_memmap
    from bayes_dc.models.nets import build_model
    from bayes_dc.spaces.whiten import Whitener

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    path = Path(spec["features"])
    ds = load_dataset("imagefolder", root=spec["root"], image_size=spec["size"], streaming="always",
                      num_workers=spec["workers"])
    trunk = build_model("vgg-small", ds.num_channels, width=4).trunk
    mean, std = ds.mean_std()
    with MemorySampler() as extract_mem:
        t0 = time.perf_counter()
        feats = extract_features_to_memmap(trunk, ds.eval_batches(spec["batch_size"]), len(ds), trunk.feature_dim,
                                           path, mean, std)
        t_extract = time.perf_counter() - t0
    with MemorySampler() as whiten_mem:
        t0 = time.perf_counter()
        x = torch.from_numpy(feats)
        z = Whitener(dim=64).fit(x).transform(x)
        t_whiten = time.perf_counter() - t0
    result = {"extract_s": t_extract, "extract_per_s": len(ds) / t_extract, "features_mib": feats.nbytes / 2**20,
              "extract_rss_mib": extract_mem.peak["VmRSS"], "extract_anon_mib": extract_mem.peak["RssAnon"],
              "whiten_s": t_whiten, "whiten_anon_mib": whiten_mem.peak["RssAnon"],
              "whiten_file_mib": whiten_mem.peak["RssFile"] - extract_mem.peak["RssFile"],
              "output_mib": z.numel() * 4 / 2**20}
    del feats, x
    path.unlink()
    return result


def run_job(spec: dict, malloc_mmap_threshold: int | None = None) -> dict:
    env = dict(os.environ)
    if malloc_mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(malloc_mmap_threshold)
    out = subprocess.run([sys.executable, __file__, "--job", json.dumps(spec)], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        raise RuntimeError(f"job {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------------


def part_a(args) -> str:
    size = args.image_size or args.image_px
    gen_seconds = generate(args.cache, max(args.sizes), args.image_px, args.seed)
    stamp = json.loads((args.cache / "generated.json").read_text())
    lines = [f"Generated {stamp['n']:,} JPEGs of {stamp['px']} px in {stamp['seconds']:.0f} s"
             + (" (this run)" if gen_seconds else " (an earlier run; reused)") + f"; batches of {args.batch_size}, "
             f"output {size} px, {args.threads} torch thread(s) per process, {os.cpu_count()} CPU cores"
             + (f", MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}" if args.malloc_mmap_threshold else "")
             + ".", ""]
    common = {"size": size, "batch_size": args.batch_size, "threads": args.threads, "seed": args.seed}
    if "data" in args.tables:
        lines += data_table(args, common)
    if "extract" in args.tables:
        lines += extract_table(args, common)
    return "\n".join(lines) + "\n"


def data_table(args, common: dict) -> list[str]:
    lines = ["| N | workers | open + mean/std s | eval img/s | train img/s (RRC + flip) | peak RSS MiB | "
             "peak RssAnon MiB | worker peak RSS MiB | uint8 in memory MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in args.sizes:
        root = view(args.cache, n)
        for workers in args.workers:
            r = run_job({"job": "data", "root": str(root), "n": n, "workers": workers, **common},
                        args.malloc_mmap_threshold)
            worker = "-" if r["worker_rss_mib"] is None else f"{r['worker_rss_mib']:.0f}"
            lines.append(f"| {n:,} | {workers} | {r['open_s']:.1f} | {r['eval_per_s']:.0f} | {r['train_per_s']:.0f} | "
                         f"{r['rss_mib']:.0f} | {r['anon_mib']:.0f} | {worker} | {r['in_memory_mib']:.0f} |")
            print(lines[-1], flush=True)
    return lines


def extract_table(args, common: dict) -> list[str]:
    workers = max(args.workers)
    lines = ["", f"Features: vgg-small width 4 (512-d), float32 memmap, {workers} workers; then "
             "Whitener(dim=64).fit + transform on torch.from_numpy(memmap). Peaks sampled every 20 ms per phase.", "",
             "| N | features on disk MiB | extract s | img/s | extract: peak RSS MiB | extract: peak RssAnon MiB | "
             "whiten s | whiten: peak RssAnon MiB | whiten: RssFile growth MiB | whitened output MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n in args.sizes:
        r = run_job({"job": "extract", "root": str(view(args.cache, n)), "n": n, "workers": workers,
                     "features": str(args.cache / f"features_{n}.npy"), **common}, args.malloc_mmap_threshold)
        lines.append(f"| {n:,} | {r['features_mib']:.0f} | {r['extract_s']:.1f} | {r['extract_per_s']:.0f} | "
                     f"{r['extract_rss_mib']:.0f} | {r['extract_anon_mib']:.0f} | {r['whiten_s']:.1f} | "
                     f"{r['whiten_anon_mib']:.0f} | {r['whiten_file_mib']:.0f} | {r['output_mib']:.0f} |")
        print(lines[-1], flush=True)
    return lines


def part_b(args) -> str:
    """The DP step at ImageNet size: 1,281,167 synthetic points (a seeded mixture of ``--true-clusters`` Gaussians),
    for each (T, covariance, d) of ``--dp-settings``: the CAVI fit (at most ``--dp-iters`` iterations, moves as
    configured by default) and, as the baseline measured in the same process, faiss k-means with k = T and as many
    iterations. Each setting runs in a fresh process, so its peak RSS is its own."""
    settings = [s.split(":") for s in args.dp_settings]
    lines = [f"{args.points:,} synthetic points, {args.true_clusters} true clusters; at most {args.dp_iters} CAVI "
             f"iterations; faiss k-means with k = T and the same number of iterations as the baseline; "
             f"{args.threads} torch/faiss thread(s), {os.cpu_count()} CPU cores (shared with other work).", "",
             "DP s covers the whole fit: the cold start (seeding and CAVI on a subsample), the CAVI iterations over all "
             "points and the move rounds; s / iteration divides it by the iterations over all points.", "",
             "| T | covariance | d | data GiB | DP s | iterations | DP s / iteration | K_active | ELBO / point | "
             "k-means s | DP / k-means (per iteration) | peak RSS GiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for truncation, covariance, dim in settings:
        r = run_job({"job": "dp", "points": args.points, "dim": int(dim), "truncation": int(truncation),
                     "covariance": covariance, "iters": args.dp_iters, "true_clusters": args.true_clusters,
                     "threads": args.threads, "seed": args.seed})
        per_iter = r["dp_s"] / max(r["iterations"], 1)
        lines.append(f"| {int(truncation):,} | {covariance} | {dim} | {r['data_gib']:.2f} | {r['dp_s']:.0f} | "
                     f"{r['iterations']} | {per_iter:.1f} | {r['k_active']} | {r['elbo']:.3f} | {r['kmeans_s']:.0f} | "
                     f"{per_iter / (r['kmeans_s'] / r['iterations']):.1f} | {r['peak_rss_gib']:.1f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def job_dp(spec: dict) -> dict:
    """One DP fit (and the k-means baseline) on generated points; see :func:`part_b`."""
    import torch

    from bayes_dc.clustering import make_backend
    from bayes_dc.config.schema import ClusterConfig

    torch.set_num_threads(spec["threads"])
    n, d = spec["points"], spec["dim"]
    with MemorySampler() as mem:
        x = synthetic_points(n, d, spec["true_clusters"], spec["seed"])
        cfg = ClusterConfig(prior="dp", truncation=spec["truncation"], covariance=spec["covariance"],
                            max_iter=spec["iters"], warm_start="none")
        result = make_backend(cfg, "cpu").fit(torch.from_numpy(x), seed=spec["seed"])
        km = make_backend(ClusterConfig(prior="kmeans", k=spec["truncation"], kmeans_niter=result.n_iter), "cpu")
        km_result = km.fit(torch.from_numpy(x), seed=spec["seed"])
    return {"data_gib": x.nbytes / 2**30, "dp_s": result.seconds, "iterations": result.n_iter,
            "k_active": result.k_active, "elbo": result.objective, "kmeans_s": km_result.seconds,
            "peak_rss_gib": max(mem.peak["VmRSS"], max_rss_mib(resource.RUSAGE_SELF)) / 1024}


def synthetic_points(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """(n, d) float32: a seeded mixture of ``clusters`` Gaussians (centres N(0, 3^2 I), unit within-cluster noise,
    Dirichlet(1) sizes), written chunk by chunk so no float64 copy of the whole array is made."""
    rng = np.random.default_rng(seed)
    centres = (3.0 * rng.standard_normal((clusters, d))).astype(np.float32)
    sizes = rng.dirichlet(np.ones(clusters))
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 65536):
        stop = min(start + 65536, n)
        labels = rng.choice(clusters, size=stop - start, p=sizes)
        out[start:stop] = centres[labels] + rng.standard_normal((stop - start, d), dtype=np.float32)
    return out


def part_c(args) -> str:
    """torchrun with 1 vs 2 processes on the CPU: one small real run each way, wall-clock and the results.

    Every run is ``experiments/run.py`` (through :func:`benchlib.run_command`, under ``torchrun --standalone`` for
    2 processes) on a seeded Fashion-MNIST subset; a 1-process run gets ``--threads 2`` (both cores) and each of 2
    processes ``--threads 1``, so both use the 2 cores. Results should agree up to float summation order, which
    training amplifies (see tests/test_distributed.py); the table shows how far they end apart.
    """
    from benchlib import run_command
    from bayes_dc.config.cli import to_args
    from bayes_dc.rundir.jsonl import read_jsonl

    out = args.cache.parent / "scale_torchrun"
    rows = []
    for prior in args.priors:
        options = {"dataset": "fashion-mnist", "subset": args.subset, "eval_subset": min(args.subset, 5000),
                   "width": 16, "epochs": args.epochs, "batch_size": args.batch_size, "prior": prior,
                   "knn_every": 0, "figures": False, "device": "cpu", "seed": args.seed}
        if prior == "dp":
            options["truncation"] = 100
        for processes in (1, 2):
            name = f"{prior}-p{processes}"
            run_options = {**options, "threads": 2 // processes}
            command = run_command(name, to_args(run_options), out, processes)
            shutil.rmtree(out / name, ignore_errors=True)   # a fresh run each time: the timing is the point
            t0 = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
            records = read_jsonl(out / name / "metrics.jsonl")
            train = [r for r in records if r["phase"] == "train"]
            final = records[-1]
            rows.append((prior, processes, wall, sum(r["train_seconds"] for r in train) / len(train),
                         sum(r.get("cluster_seconds", 0.0) for r in records) / sum("round" in r for r in records),
                         train[0]["loss"], final["nmi"], final["k_active"], final.get("knn")))
            print(rows[-1], flush=True)
    lines = [f"torchrun --standalone, gloo, CPU ({os.cpu_count()} cores): Fashion-MNIST subset {args.subset:,}, "
             f"vgg-small width 16, {args.epochs} epochs, batch {args.batch_size} (global), seed {args.seed}; "
             "1 process x 2 threads vs 2 processes x 1 thread.", "",
             "| backend | processes | wall s (incl. start-up) | train s / epoch | clustering s / round | "
             "loss, epoch 0 | final NMI | final K_active | final kNN |", "|---|---|---|---|---|---|---|---|---|"]
    for prior, processes, wall, train_s, cluster_s, loss, nmi, k_active, knn in rows:
        lines.append(f"| {prior} | {processes} | {wall:.0f} | {train_s:.1f} | {cluster_s:.1f} | {loss:.5f} | "
                     f"{nmi:.4f} | {k_active} | {'-' if knn is None else f'{knn:.4f}'} |")
    return "\n".join(lines) + "\n"


JOBS = {"data": job_data, "extract": job_extract, "dp": job_dp}   # run in a child process each (run_job)
PARTS = {"a": part_a, "b": part_b, "c": part_c}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.job is not None:
        spec = json.loads(args.job)
        print(json.dumps(JOBS[spec["job"]](spec)))
        return 0
    table = PARTS[args.part](args)
    print()
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
