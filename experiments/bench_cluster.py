"""Clustering benchmark: faiss k-means vs the DP-GMM (CAVI cold / warm, Pyro SVI) vs scikit-learn's
BayesianGaussianMixture, on the same features and threads. Prints a Markdown table (and writes it to --out).

    python experiments/bench_cluster.py --data synthetic --n 60000 --d 256 --truncation 300 --out bench_out/x.md
    python experiments/bench_cluster.py --device cuda --n 1281167 --skip sklearn,svi      # GPU, ImageNet-sized

Speed is reported as a ratio to the faiss k-means time measured in the same run (eval-protocol.md).
Peak memory: on CPU the peak resident-set growth during the call (sampled every 2 ms; covers numpy, torch and
faiss alike); on CUDA torch.cuda.max_memory_allocated during the call.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bayes_dc.clustering.base import ACTIVE_WEIGHT  # noqa: E402
from bayes_dc.clustering.dpgmm import DPGMMBackend  # noqa: E402
from bayes_dc.clustering.kmeans import KMeansBackend  # noqa: E402


def synthetic(n: int, d: int, clusters: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Gaussian mixture: centres N(0, I_d), per-cluster per-dimension std U(0.5, 1.5), uniform cluster sizes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    labels = torch.randint(clusters, (n,), generator=g)
    scales = 0.5 + torch.rand(clusters, d, generator=g)
    x = torch.empty(n, d)
    for start in range(0, n, 65536):                      # chunked so the ImageNet-sized set fits in memory
        stop = min(start + 65536, n)
        x[start:stop] = centres[labels[start:stop]] + torch.randn(stop - start, d, generator=g) * scales[labels[start:stop]]
    return x, labels.numpy()


def fashion_mnist_features(d: int, seed: int, device: str, data_root: str | None = None,
                           width: int = 64) -> tuple[torch.Tensor, np.ndarray]:
    """Whitened PCA-d + L2 features (N=60,000) of Fashion-MNIST train from a random-init vgg-small trunk."""
    from benchlib import fmnist_trunk_features

    from bayes_dc.preprocess import Whitener

    feats, data = fmnist_trunk_features(width=width, device=device, seed=seed, data_root=data_root)
    return Whitener(dim=d, whiten=True, l2=True).fit_transform(feats), np.asarray(data.labels)


class PeakMemory:
    """Peak memory growth of a block: CUDA max_memory_allocated, or sampled RSS on CPU."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak = cuda, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self.peak, self.running = self._rss(), self._rss(), True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.mib = (max(self.peak, self._rss()) - self.base) / 2**20


def run(args: argparse.Namespace) -> str:
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import faiss
            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
    cuda = args.device == "cuda"
    if args.data == "synthetic":
        x, labels = synthetic(args.n, args.d, args.clusters, args.seed)
        data_note = f"synthetic Gaussian mixture, {args.clusters} true clusters, N={args.n}, d={args.d}"
    else:
        x, labels = fashion_mnist_features(args.d, args.seed, args.device, args.data_root, args.width)
        data_note = f"Fashion-MNIST train, random-init trunk, whitened PCA-{args.d} + L2, N={x.shape[0]}"
    x_dev = x.to(args.device)
    t = args.truncation
    skip = set(filter(None, args.skip.split(",")))
    rows = []

    def record(name, seconds, iterations, elbo, labels_hat, k_active, mib, note=""):
        rows.append(dict(name=name, seconds=seconds, iterations=iterations, elbo=elbo,
                         nmi=normalized_mutual_info_score(labels, labels_hat), k_active=k_active, mib=mib, note=note))

    with PeakMemory(cuda) as mem:
        km = KMeansBackend(k=t, niter=20, use_gpu=cuda).fit(x, seed=args.seed)
    record("faiss k-means (k=T, niter 20)", km.seconds, km.n_iter, None, km.labels, km.k_active, mem.mib,
           f"loss {km.objective:.4f}")

    dp = DPGMMBackend(t, topk=args.topk, max_iter=args.max_iter, tol=args.tol, device=args.device)
    with PeakMemory(cuda) as mem:
        cold = dp.fit(x_dev, seed=args.seed)
    record("DP-GMM CAVI cold", cold.seconds, cold.n_iter, cold.objective, cold.labels, cold.k_active, mem.mib,
           f"converged={cold.info['converged']}")

    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(args.seed + 1)) * args.warm_noise
    previous = dp.fit((x + noise).to(args.device), seed=args.seed + 1)
    with PeakMemory(cuda) as mem:
        warm = dp.fit(x_dev, seed=args.seed, warm_state=previous.state)
    record("DP-GMM CAVI warm (init)", warm.seconds, warm.n_iter, warm.objective, warm.labels, warm.k_active, mem.mib,
           f"from a fit on X + N(0, {args.warm_noise}^2)")

    if cuda:
        profiled = DPGMMBackend(t, topk=args.topk, max_iter=args.max_iter, tol=args.tol, device=args.device,
                                profile_gemm=True).fit(x_dev, seed=args.seed)
        rows[-2]["note"] += (f"; fused E-step GEMM {profiled.info['gemm_seconds']:.3f} s of {profiled.seconds:.3f} s "
                             f"({100 * profiled.info['gemm_seconds'] / profiled.seconds:.0f} %, synchronised run)")

    if "svi" not in skip:
        svi = DPGMMBackend(t, inference="svi", svi_steps=args.svi_steps, svi_batch=args.svi_batch, svi_lr=args.svi_lr,
                           topk=args.topk, device=args.device)
        with PeakMemory(cuda) as mem:
            res = svi.fit(x_dev, seed=args.seed)
        record(f"DP-GMM Pyro SVI ({args.svi_steps} steps, batch {args.svi_batch})", res.seconds, res.n_iter,
               res.objective, res.labels, res.k_active, mem.mib, "ELBO after one closed-form E+M step")

    if "sklearn" not in skip:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import BayesianGaussianMixture
        xs = x.numpy().astype(np.float64)
        bgm = BayesianGaussianMixture(n_components=t, covariance_type="diag",
                                      weight_concentration_prior_type="dirichlet_process", weight_concentration_prior=1.0,
                                      max_iter=args.sklearn_iter, init_params="k-means++", random_state=args.seed)
        with PeakMemory(False) as mem, warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            bgm.fit(xs)
            seconds = time.perf_counter() - start
        record(f"scikit-learn BayesianGaussianMixture (diag, DP, max_iter {args.sklearn_iter})", seconds, bgm.n_iter_,
               None, bgm.predict(xs), int((bgm.weights_ >= ACTIVE_WEIGHT).sum()), mem.mib,
               f"own lower bound {bgm.lower_bound_ / len(xs):.4f}/pt (drops constants; not comparable)")

    base = rows[0]["seconds"]
    device_name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"Data: {data_note}; T={t}, topk={args.topk}, tol={args.tol}; device: {device_name}; "
             f"torch {torch.__version__}.", "",
             "| method | seconds | ratio vs faiss | iterations | ELBO / point | NMI | K_active | peak mem (MiB) | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        elbo = "–" if r["elbo"] is None else f"{r['elbo']:.4f}"
        lines.append(f"| {r['name']} | {r['seconds']:.2f} | {r['seconds'] / base:.2f} | {r['iterations']} | {elbo} | "
                     f"{r['nmi']:.4f} | {r['k_active']} | {r['mib']:.0f} | {r['note']} |")
    memory = "torch.cuda.max_memory_allocated" if cuda else "peak RSS growth, sampled every 2 ms"
    lines += ["", f"Peak memory: {memory}. CAVI warm = `init` warm start timed alone. "
              "CAVI rows: iterations on the full data (cold starts add k-means++ seeding and subsample iterations)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["synthetic", "fashion-mnist"], default="synthetic")
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=100, help="true clusters of the synthetic mixture")
    parser.add_argument("--truncation", type=int, default=300)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--warm-noise", type=float, default=0.05)
    parser.add_argument("--svi-steps", type=int, default=100)
    parser.add_argument("--svi-batch", type=int, default=1024)
    parser.add_argument("--svi-lr", type=float, default=0.05)
    parser.add_argument("--sklearn-iter", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: all)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--skip", default="", help="comma-separated rows to skip: svi,sklearn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the loader's search)")
    parser.add_argument("--width", type=int, default=64, help="vgg-small width of the random-init trunk")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    table = run(args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
