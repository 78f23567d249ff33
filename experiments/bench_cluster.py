"""Clustering benchmark: faiss k-means vs the DP-GMM (CAVI cold / warm per covariance family, Pyro SVI) vs
scikit-learn's BayesianGaussianMixture with the same prior, on the same features and threads. Prints a Markdown
table (and writes it to --out).

    python experiments/bench_cluster.py --data synthetic --n 60000 --d 256 --truncation 300 --out bench_out/x.md
    python experiments/bench_cluster.py --data fashion-mnist --d 64 --threads 2        # random-init trunk, PCA-64
    python experiments/bench_cluster.py --data fmnist-umap --truncation 100 --threads 2 # UMAP-10 of test pixels
    python experiments/bench_cluster.py --device cuda --n 1281167 --skip sklearn,svi      # GPU, ImageNet-sized

Speed is reported as a ratio to the faiss k-means time measured in the same run (eval-protocol.md). The DP rows
give the seconds spent in moves separately (and their share of the fit). scikit-learn's own lower bound drops
constants, so its solution is scored under *our* model with the *same* prior: its responsibilities -> our M-step
-> our ELBO (column "ELBO / point"). Peak memory: on CPU the peak resident-set growth during the call (sampled
every 2 ms; covers numpy, torch and faiss alike); on CUDA torch.cuda.max_memory_allocated during the call.

Features that take minutes to make are cached under --cache (default bench_out/): the random-init trunk features
of Fashion-MNIST train, and the UMAP embedding (umap-learn, 10 components of PCA-50 pixels, 20 neighbours,
min_dist 0, seed 0) of Fashion-MNIST test.
"""
from __future__ import annotations

import argparse
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from bayes_dc.clustering.base import active_mask
from bayes_dc.clustering.dpgmm import DEFAULT_TOL, DPGMM, DPGMMBackend
from bayes_dc.clustering.kmeans import KMeansBackend

DATA = ("synthetic", "fashion-mnist", "fmnist-umap")


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


def cached(path: Path, make) -> dict:
    """np.load(path) if it exists, else make() -> dict of arrays, saved to path."""
    if path.exists():
        with np.load(path) as z:
            return dict(z)
    arrays = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def trunk_features(seed: int, device: str, data_root: str | None = None, width: int = 64, cache: Path | None = None,
                   subset: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Random-init vgg-small trunk features (N, F) of Fashion-MNIST train (N=60,000 or ``subset``) and the labels,
    cached under ``cache``."""
    from benchlib import fmnist_trunk_features

    def make():
        feats, data = fmnist_trunk_features(subset=subset, width=width, device=device, seed=seed, data_root=data_root)
        return {"features": feats.cpu().numpy(), "labels": np.asarray(data.labels)}

    name = f"fmnist_train_trunk_w{width}_s{seed}{'' if subset is None else f'_n{subset}'}.npz"
    arrays = cached(cache / name, make) if cache is not None else make()
    return torch.from_numpy(arrays["features"]), arrays["labels"]


def fashion_mnist_features(d: int, seed: int, device: str, data_root: str | None = None, width: int = 64,
                           cache: Path | None = None, subset: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Whitened PCA-d + L2 of :func:`trunk_features`."""
    from bayes_dc.spaces.whiten import Whitener

    feats, labels = trunk_features(seed, device, data_root, width, cache, subset)
    return Whitener(dim=d, whiten=True, l2=True).fit_transform(feats.to(device)).cpu(), labels


def fmnist_umap(data_root: str | None = None, cache: Path | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """UMAP-10 of PCA-50 Fashion-MNIST test pixels (umap-learn, 20 neighbours, min_dist 0, seed 0), cached."""
    def make():
        import umap
        from sklearn.decomposition import PCA

        from bayes_dc.data import load_dataset

        data = load_dataset("fashion-mnist", "test", root=data_root)
        pixels = data.images.reshape(len(data), -1).float().numpy() / 255.0
        pca = PCA(50, random_state=0).fit_transform(pixels)
        embedding = umap.UMAP(n_components=10, n_neighbors=20, min_dist=0.0, random_state=0).fit_transform(pca)
        return {"embedding": embedding.astype(np.float32), "labels": np.asarray(data.labels)}

    arrays = cached(cache / "fmnist_test_umap10.npz", make) if cache is not None else make()
    return torch.from_numpy(arrays["embedding"]), arrays["labels"]


def load_features(args) -> tuple[torch.Tensor, np.ndarray, str]:
    if args.data == "synthetic":
        x, labels = synthetic(args.n, args.d, args.clusters, args.seed)
        return x, labels, f"synthetic Gaussian mixture, {args.clusters} true clusters, N={args.n}, d={args.d}"
    if args.data == "fmnist-umap":
        x, labels = fmnist_umap(args.data_root, args.cache)
        return x, labels, f"Fashion-MNIST test, UMAP-10 of PCA-50 pixels, N={x.shape[0]}"
    x, labels = fashion_mnist_features(args.d, args.seed, args.device, args.data_root, args.width, args.cache)
    return x, labels, (f"Fashion-MNIST train, random-init vgg-small width {args.width}, whitened PCA-{args.d} + L2, "
                       f"N={x.shape[0]}")


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


def sklearn_prior(engine: DPGMM, x: torch.Tensor) -> dict:
    """scikit-learn's BayesianGaussianMixture prior arguments equal to the engine's prior (full or diag)."""
    prior = engine.make_prior(x)[0].components
    args = dict(mean_precision_prior=float(prior.kappa[0]), mean_prior=prior.m[0].cpu().numpy())
    if engine.covariance == "full":
        psi0 = prior.scale[0] @ prior.scale[0].T
        return dict(args, degrees_of_freedom_prior=float(prior.dof[0]), covariance_prior=psi0.cpu().numpy())
    # Gamma(a0, b0) per dimension is scikit-learn's diag model with nu0 = 2 a0 and covariance_prior = 2 b0, but
    # scikit-learn requires nu0 > d - 1 even for diag: then nu0 = d, with the same expected variances b0 / (a0 - 1)
    nu0 = max(float(2 * prior.dof[0, 0]), float(x.shape[1]))
    expected_var = (prior.scale[0] / (prior.dof[0] - 1)).cpu().numpy()
    return dict(args, degrees_of_freedom_prior=nu0, covariance_prior=expected_var * (nu0 - 2))


def elbo_of_responsibilities(engine_kwargs: dict, x: torch.Tensor, resp: np.ndarray) -> float:
    """Our ELBO per point of dense responsibilities (N, T) under our model and prior (after our M-step)."""
    values, index = torch.from_numpy(resp).float().sort(1, descending=True)
    engine = DPGMM(**{**engine_kwargs, "topk": resp.shape[1], "moves": "none"}).start_from(x, values, index)
    return engine.elbo_ / x.shape[0]


def run(args: argparse.Namespace) -> str:
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import faiss
            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
    from threadpoolctl import threadpool_limits
    cuda = args.device == "cuda"
    x, labels, data_note = load_features(args)
    x_dev = x.to(args.device)
    t = args.truncation
    skip = set(filter(None, args.skip.split(",")))
    rows = []

    def record(name, seconds, iterations, elbo, labels_hat, k_active, mib, moves="–", note=""):
        rows.append(dict(name=name, seconds=seconds, iterations=iterations, elbo=elbo, moves=moves,
                         nmi=normalized_mutual_info_score(labels, labels_hat), k_active=k_active, mib=mib, note=note))

    with PeakMemory(cuda) as mem:
        km = KMeansBackend(k=t, niter=20, use_gpu=cuda).fit(x, seed=args.seed)
    record("faiss k-means (k=T, niter 20)", km.seconds, km.n_iter, None, km.labels, km.k_active, mem.mib,
           note=f"loss {km.objective:.4f}")

    # the warm start comes from a fit on slightly different features: each dimension moved by warm_noise x its std
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(args.seed + 1)) * args.warm_noise * x.std(0)
    for covariance in args.covariances.split(","):
        kwargs = dict(covariance=covariance, topk=args.topk, max_iter=args.max_iter, tol=args.tol,
                      prior_scale=args.prior_scale, moves=args.moves)
        dp = DPGMMBackend(t, device=args.device, **kwargs)
        with PeakMemory(cuda) as mem, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cold = dp.fit(x_dev, seed=args.seed)
        moves = cold.info["moves"]
        tried = sum(m["tried"] for k, m in moves.items() if k != "sort")
        accepted = sum(m["accepted"] for k, m in moves.items() if k != "sort")
        record(f"DP-GMM CAVI cold, {covariance}", cold.seconds, cold.n_iter, cold.objective, cold.labels, cold.k_active,
               mem.mib, f"{cold.info['move_seconds']:.2f} ({100 * cold.info['move_seconds'] / cold.seconds:.0f} %)",
               f"converged={cold.info['converged']}; moves accepted/tried {accepted}/{tried} "
               + ", ".join(f"{k} {m['accepted']}/{m['tried']}" for k, m in moves.items() if m["tried"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            previous = dp.fit((x + noise).to(args.device), seed=args.seed + 1)
        with PeakMemory(cuda) as mem, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warm = dp.fit(x_dev, seed=args.seed, warm_state=previous.state)
        record(f"DP-GMM CAVI warm (init), {covariance}", warm.seconds, warm.n_iter, warm.objective, warm.labels,
               warm.k_active, mem.mib, f"{warm.info['move_seconds']:.2f}",
               f"from a fit on X + N(0, ({args.warm_noise} std_j)^2)")
        if cuda:
            profiled = DPGMMBackend(t, device=args.device, profile_gemm=True, **kwargs).fit(x_dev, seed=args.seed)
            rows[-2]["note"] += (f"; E-step GEMMs {profiled.info['gemm_seconds']:.3f} s of {profiled.seconds:.3f} s "
                                 f"({100 * profiled.info['gemm_seconds'] / profiled.seconds:.0f} %, synchronised run)")
        if "sklearn" not in skip and covariance in ("full", "diag"):
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.mixture import BayesianGaussianMixture
            xs = x.numpy().astype(np.float64)
            engine_kwargs = dict(truncation=t, **kwargs)
            bgm = BayesianGaussianMixture(n_components=t, covariance_type=covariance,
                                          weight_concentration_prior_type="dirichlet_process",
                                          weight_concentration_prior=1.0, max_iter=args.sklearn_iter,
                                          init_params="k-means++", random_state=args.seed,
                                          **sklearn_prior(DPGMM(**engine_kwargs), x))
            with PeakMemory(False) as mem, warnings.catch_warnings(), threadpool_limits(args.threads or None):
                warnings.simplefilter("ignore", ConvergenceWarning)
                start = time.perf_counter()
                bgm.fit(xs)
                seconds = time.perf_counter() - start
            resp = bgm.predict_proba(xs)
            same = "same prior" if covariance == "full" or x.shape[1] <= 4 else "prior with nu0 = d"
            record(f"scikit-learn BayesianGaussianMixture ({covariance}, DP, {same}, max_iter {args.sklearn_iter})",
                   seconds, bgm.n_iter_, elbo_of_responsibilities(engine_kwargs, x, resp), resp.argmax(1),
                   int(active_mask(bgm.weights_).sum()), mem.mib,
                   note=f"converged={bgm.converged_}; ELBO = its responsibilities under our model")

    if "svi" not in skip:
        cavi_seconds = {r["name"].rsplit(", ", 1)[1]: r["seconds"] for r in rows
                        if r["name"].startswith("DP-GMM CAVI cold")}
        starts = [None if v == "auto" else int(v) for v in args.svi_init_subsample.split(",")]
        for covariance in args.covariances.split(","):
            for start in starts:
                svi = DPGMMBackend(t, inference="svi", svi_steps=args.svi_steps, svi_batch=args.svi_batch,
                                   svi_lr=args.svi_lr, topk=args.topk, tol=args.tol, device=args.device,
                                   covariance=covariance, prior_scale=args.prior_scale, moves=args.moves,
                                   init_subsample=start)
                with PeakMemory(cuda) as mem, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = svi.fit(x_dev, seed=args.seed)
                subsample = "" if start is None else f", start subsample {start}"
                record(f"DP-GMM Pyro SVI (at most {args.svi_steps} steps, batch {args.svi_batch}, lr {args.svi_lr}"
                       f"{subsample}), {covariance}", res.seconds, res.n_iter, res.objective, res.labels, res.k_active,
                       mem.mib, note=f"converged={res.info['converged']}; SVI's own ELBO estimate "
                                     f"{res.info['svi_elbo']:.4f}; {res.seconds / cavi_seconds[covariance]:.2f} x CAVI "
                                     "cold's time; ELBO column after the closed-form finish (one E+M step)")

    base = rows[0]["seconds"]
    device_name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"Data: {data_note}; T={t}, topk={args.topk}, tol={args.tol}, prior_scale={args.prior_scale}, "
             f"moves={args.moves}; device: {device_name}; torch {torch.__version__}.", "",
             "| method | seconds | ratio vs faiss | iterations | ELBO / point | NMI | K_active | move s (share) | "
             "peak mem (MiB) | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        elbo = "–" if r["elbo"] is None else f"{r['elbo']:.4f}"
        lines.append(f"| {r['name']} | {r['seconds']:.2f} | {r['seconds'] / base:.2f} | {r['iterations']} | {elbo} | "
                     f"{r['nmi']:.4f} | {r['k_active']} | {r['moves']} | {r['mib']:.0f} | {r['note']} |")
    memory = "torch.cuda.max_memory_allocated" if cuda else "peak RSS growth, sampled every 2 ms"
    lines += ["", f"Peak memory: {memory}. CAVI warm = `init` warm start timed alone. CAVI rows: iterations on the "
              "full data (cold starts add k-means++ seeding and the subsample phase, whose moves count in the move "
              "seconds)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=DATA, default="synthetic")
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--d", type=int, default=256, help="synthetic dimension, or the PCA dimension of fashion-mnist")
    parser.add_argument("--clusters", type=int, default=100, help="true clusters of the synthetic mixture")
    parser.add_argument("--truncation", type=int, default=300)
    parser.add_argument("--covariances", default="full,diag", help="comma-separated DP families: full,diag,spherical")
    parser.add_argument("--prior-scale", type=float, default=DPGMM().prior_scale)
    parser.add_argument("--moves", default="all")
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--tol", type=float, default=DEFAULT_TOL,
                        help="DP-GMM convergence: share of the responsibility mass an E-step may still move")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--warm-noise", type=float, default=0.05,
                        help="the warm start's previous fit sees X plus Gaussian noise of this many feature stds")
    parser.add_argument("--svi-steps", type=int, default=2000, help="SVI step budget (it stops earlier when converged)")
    parser.add_argument("--svi-batch", type=int, default=1024)
    parser.add_argument("--svi-lr", type=float, default=0.05)
    parser.add_argument("--svi-init-subsample", default="auto",
                        help="comma-separated points of SVI's CAVI start (auto: the engine's max(20 T, 5000)); a row each")
    parser.add_argument("--sklearn-iter", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch, faiss and BLAS threads (default: all)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--skip", default="", help="comma-separated rows to skip: svi,sklearn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the loader's search)")
    parser.add_argument("--width", type=int, default=64, help="vgg-small width of the random-init trunk")
    parser.add_argument("--cache", type=Path, default=Path("bench_out"), help="folder for cached features")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    table = run(args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
