"""A clustering space the run learns: parametric UMAP (``--reduce pumap``).

UMAP (McInnes et al. 2018) builds a fuzzy k-nearest-neighbour graph of the data and lays the points out so that
graph neighbours are close and random pairs far apart. Parametric UMAP (Sainburg, McInnes & Gentner 2021)
replaces the free layout by an encoder network trained on the same loss, so any new point is mapped by one
forward pass. Here, every round:

1. PCA of the features to ``pca_dim`` (not whitened; the sums are those of :class:`~bayes_dc.spaces.whiten.Whitener`);
2. the exact k-nearest-neighbour graph of those PCs (:func:`~bayes_dc.spaces.knn.nearest_neighbors`), made
   into UMAP's fuzzy simplicial set (:func:`fuzzy_graph`: per-point ``rho`` and ``sigma`` with
   ``sum_j exp(-(d_ij - rho_i) / sigma_i) = log2(k)``, then the fuzzy union ``W + W^T - W * W^T``);
3. an MLP encoder ``pca_dim -> hidden -> hidden -> dim`` trained with UMAP's cross-entropy (:func:`umap_loss`):
   edges drawn with probability proportional to their weight pull their ends together, ``negative_rate``
   shuffled pairs per edge push apart, ``q(d) = 1 / (1 + a d^(2b))`` with (a, b) fitted to ``min_dist``;
4. the points are the encoder's outputs for every row.

Its pair loss (:meth:`ParametricUMAPReducer.pair_loss`, ``space_weight``) is the same cross-entropy with the two
augmented views of an image as the positive pair, the encoder fixed: the trunk learns the neighbourhoods the space
is built from.

Cold start: the encoder is first regressed onto the spectral embedding of the round's fuzzy graph (umap-learn's own
layout initialisation, ``init="spectral"``; :func:`spectral_targets`, :func:`distill_encoder`), then trained on the
UMAP loss. From random weights the encoder leaves the clusters wider, and the DP then splits them into more
components (BENCHMARKS.md section 12.1, "One round on the same features").

Warm start: the encoder keeps its weights from the previous round and only the graph is rebuilt. The PCA basis is
refitted (the trunk moved), so the first layer is re-expressed in the new basis (``W1 U_old^T U_new``, exact on
the new span) before ``warm_epochs`` of training instead of ``epochs``. A relabel then costs a kNN search, a few
encoder epochs and a forward pass, not a new layout.

Why not a library: umap-learn's ``ParametricUMAP`` needs TensorFlow/Keras; TorchDR's ``UMAP(encoder=...)`` was
slower than umap-learn and its untuned encoder over-split Fashion-MNIST (README.md, "Why our own ... rather than
a library"), and neither keeps an encoder warm across refits of a changing PCA basis. The pieces here are small:
faiss for the graph (:mod:`bayes_dc.spaces.knn`), UMAP's graph maths, a torch training loop.

Randomness: one ``torch.Generator`` seeded by the round's seed draws the initial weights, edges and negatives, so
the same seed on the same machine gives the same space (and a resumed run the uninterrupted one's).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import numpy as np
import scipy.sparse
import torch

from bayes_dc.config.rules import OptionError
from bayes_dc.runtime.distributed import Distributed
from bayes_dc.runtime.threads import torch_threads_kept
from bayes_dc.spaces.base import Reducer, Reduction
from bayes_dc.spaces.knn import nearest_neighbors
from bayes_dc.spaces.umap import check_umap_options
from bayes_dc.spaces.whiten import Whitener, principal_axes, summed

#: Share of an encoder fit's steps over which the learning rate warms up (:func:`train_encoder`).
WARMUP_SHARE = 0.05
#: Bisection steps solving the log2(k) calibration of UMAP's smooth kNN distances (umap-learn uses 64 too).
SIGMA_BISECTION_STEPS = 64
#: Edges whose tails are shuffled into each other's negatives (:func:`negative_positions`); the unit of work a rank
#: of a multi-process encoder fit takes.
NEGATIVE_BLOCK = 256
#: Adam steps of the cold encoder's regression onto the spectral embedding (:func:`distill_encoder`), on batches of
#: max(256, N / 50) rows (so ~30 epochs at any N >= 12,800).
DISTILL_STEPS = 1500
#: Encoder initialisations of a cold round (``--pumap-init``).
PUMAP_INITS = ("spectral", "random")


def fit_ab(min_dist: float, spread: float = 1.0) -> tuple[float, float]:
    """(a, b) of UMAP's low-dimensional similarity ``1 / (1 + a d^(2b))`` fitted (least squares, as umap-learn's
    ``find_ab_params``) to the curve that is 1 up to ``min_dist`` and ``exp(-(d - min_dist) / spread)`` after."""
    from scipy.optimize import curve_fit

    d = np.linspace(0, spread * 3, 300)
    target = np.where(d < min_dist, 1.0, np.exp(-(d - min_dist) / spread))
    (a, b), _ = curve_fit(lambda x, a, b: 1.0 / (1.0 + a * x ** (2 * b)), d, target)
    return float(a), float(b)


def smooth_knn(distances: torch.Tensor) -> torch.Tensor:
    """UMAP's membership strengths (N, k-1) of each point's k-1 neighbours (``distances`` (N, k), column 0 = itself).

    ``rho_i`` = distance to the nearest point at a non-zero distance; ``sigma_i`` solves ``sum_j exp(-max(d_ij -
    rho_i, 0) / sigma_i) = log2(k)`` (bisection, all rows at once), floored at 1e-3 of the row's mean distance;
    strength ``exp(-max(d_ij - rho_i, 0) / sigma_i)``. McInnes et al. 2018, section 3; umap-learn's
    ``smooth_knn_dist`` and ``compute_membership_strengths`` with ``local_connectivity = 1``.
    """
    full = distances.double()                                                          # (N, k)
    d = full[:, 1:]                                                                    # (N, k-1)
    k = distances.shape[1]
    positive = torch.where(full > 0, full, torch.inf)
    rho = positive.min(1, keepdim=True).values
    rho = torch.where(torch.isinf(rho), torch.zeros_like(rho), rho)                    # all duplicates: rho 0
    excess = (d - rho).clamp_min(0)                                                    # (N, k-1)
    target = math.log2(k)
    lo, hi = torch.zeros_like(rho), torch.full_like(rho, torch.inf)
    sigma = torch.ones_like(rho)
    for _ in range(SIGMA_BISECTION_STEPS):
        too_big = torch.exp(-excess / sigma).sum(1, keepdim=True) > target             # sigma too large: shrink
        hi = torch.where(too_big, sigma, hi)
        lo = torch.where(too_big, lo, sigma)
        sigma = torch.where(torch.isinf(hi), sigma * 2, (lo + hi) / 2)
    floor = torch.where(rho > 0, full.mean(1, keepdim=True), full.mean())
    sigma = torch.maximum(sigma, 1e-3 * floor)
    return torch.exp(-excess / sigma).float()


def fuzzy_graph(distances: torch.Tensor, indices: torch.Tensor) -> scipy.sparse.coo_matrix:
    """UMAP's symmetric fuzzy graph (N, N) from a kNN search (column 0 = the point itself): the fuzzy union
    ``W + W^T - W * W^T`` (:func:`fuzzy_union`) of the directed membership strengths (:func:`smooth_knn`)."""
    return fuzzy_union(smooth_knn(distances), indices)


def fuzzy_union(strengths: torch.Tensor, indices: torch.Tensor) -> scipy.sparse.coo_matrix:
    """The fuzzy union ``W + W^T - W * W^T`` (N, N) of directed strengths (N, k-1) to ``indices[:, 1:]`` (N, k)."""
    n, k = indices.shape
    rows = np.repeat(np.arange(n), k - 1)
    directed = scipy.sparse.csr_matrix((strengths.numpy().ravel(), (rows, indices[:, 1:].numpy().ravel())),
                                       shape=(n, n))
    transpose = directed.T.tocsr()
    graph = directed + transpose - directed.multiply(transpose)
    graph.eliminate_zeros()
    return graph.tocoo()


def umap_loss(head: torch.Tensor, tail: torch.Tensor, a: float, b: float, negatives: torch.Tensor,
              normaliser: int) -> torch.Tensor:
    """UMAP's fuzzy-set cross-entropy on a batch of sampled edges (B, d), summed and divided by ``normaliser``.

    Each edge (head_i, tail_i) is a positive pair (target similarity 1); each row of ``negatives`` (r, B) pairs
    head_i with ``tail[negatives[j, i]]`` as a negative (target 0): shuffled tails, as parametric UMAP does (UMAP's
    own uniform negatives scored no better: BENCHMARKS.md 8.1). With ``t = a * d^(2b)`` the similarity is
    ``1/(1+t)``, so ``-log q = softplus(log t)`` and ``-log(1-q) = softplus(-log t)``, stable at d -> 0 and d -> inf.
    """
    def log_t(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return math.log(a) + b * torch.log((x - y).pow(2).sum(1) + 1e-6)

    attract = torch.nn.functional.softplus(log_t(head, tail))                          # (B,)
    rate = negatives.shape[0]
    repel = torch.nn.functional.softplus(-log_t(head.repeat(rate, 1), tail[negatives.reshape(-1)]))   # (rB,)
    return (attract.sum() + repel.sum()) / normaliser


def negative_positions(batch: int, rate: int, generator: torch.Generator) -> torch.Tensor:
    """Positions (rate, batch) of the negative partners of a batch's edges: ``rate`` shuffles of the tails within
    each block of ``NEGATIVE_BLOCK`` consecutive edges (the last block may be shorter).

    Blocks, rather than the whole batch, so that a rank of a multi-process fit holds every partner of its edges:
    ranks take whole blocks (:func:`rank_blocks`), and the batch, its negatives and so the gradient sum are those of
    one process whatever the number of processes.
    """
    keys = torch.rand(rate, batch, generator=generator)
    block = torch.arange(batch) // NEGATIVE_BLOCK
    # sort by (block, random key): a uniform shuffle within every block at once
    order = torch.argsort(block.double() * 2 + keys.double(), dim=1)
    return order


def rank_blocks(batch: int, rank: int, world: int) -> tuple[int, int]:
    """This rank's positions ``(lo, hi)`` of a global batch: a contiguous run of whole negative blocks."""
    first, stop = Distributed(rank=rank, world=world).shard(-(-batch // NEGATIVE_BLOCK))     # in whole blocks
    return min(batch, first * NEGATIVE_BLOCK), min(batch, stop * NEGATIVE_BLOCK)


def new_encoder(in_dim: int, hidden: int, out_dim: int, generator: torch.Generator) -> torch.nn.Sequential:
    """The encoder MLP ``in_dim -> hidden -> hidden -> out_dim`` (ReLU), initialised from ``generator``."""
    layers = [torch.nn.Linear(in_dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
              torch.nn.Linear(hidden, out_dim)]
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, torch.nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)   # torch's default init, drawn from our generator
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    return torch.nn.Sequential(*layers)


def encode(weights: dict[str, torch.Tensor], x: torch.Tensor, batch: int = 65536) -> torch.Tensor:
    """The encoder of a state dict (``0.weight``, ``0.bias``, ``2.*``, ``4.*``) applied to ``x`` (B, in) -> (B, d),
    in chunks, without building a module (cheap enough to call per training batch for ``--two-views``)."""
    names = sorted({name.split(".")[0] for name in weights}, key=int)
    out = []
    for chunk in x.split(batch):
        h = chunk
        for i, name in enumerate(names):
            h = torch.nn.functional.linear(h, weights[f"{name}.weight"].to(h), weights[f"{name}.bias"].to(h))
            if i < len(names) - 1:
                h = torch.relu(h)
        out.append(h)
    return torch.cat(out) if out else x.new_zeros((0, weights[f"{names[-1]}.weight"].shape[0]))


class EdgeSampler:
    """Edges of a fuzzy graph drawn with probability proportional to their weight (inverse CDF, any size)."""

    def __init__(self, graph: scipy.sparse.coo_matrix):
        self.head = torch.from_numpy(graph.row.astype(np.int64))
        self.tail = torch.from_numpy(graph.col.astype(np.int64))
        cdf = np.cumsum(graph.data, dtype=np.float64)
        self.cdf = torch.from_numpy(cdf / cdf[-1])

    def __len__(self) -> int:
        return len(self.head)

    def sample(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.searchsorted(self.cdf, torch.rand(size, generator=generator, dtype=torch.float64))
        pick = pick.clamp_max(len(self.head) - 1)
        return self.head[pick], self.tail[pick]


def train_encoder(encoder: torch.nn.Module, inputs: torch.Tensor, sampler: EdgeSampler, *, epochs: int,
                  a: float, b: float, negative_rate: int, batch_size: int, lr: float,
                  generator: torch.Generator, dist: Distributed | None = None) -> list[float]:
    """Adam on :func:`umap_loss` over ``epochs`` passes of as many sampled edges as the graph has. ``inputs`` (N, p)
    lie on the encoder's device. Returns the mean loss of each epoch.

    The learning rate warms up linearly over the first ``WARMUP_SHARE`` of the steps and then decays linearly to 0
    (UMAP's own SGD decays linearly too): a fresh Adam takes steps of about ``lr`` per weight whatever the gradient,
    which on a warm encoder silenced ReLUs wholesale and left the embedding of rank < d.

    Data-parallel under torchrun (``dist``): every rank draws the same global batch from the same generator, encodes
    and back-propagates only its blocks of it (:func:`rank_blocks`), and the gradients are summed over the ranks
    (one all-reduce a step, as DDP does), so every rank takes the one-process step up to the order of float sums.
    """
    dist = dist or Distributed()
    device = inputs.device
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
    steps = max(1, len(sampler) // batch_size)
    total_steps, warmup = steps * epochs, max(1, int(WARMUP_SHARE * steps * epochs))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: min((t + 1) / warmup, max(0.0, (total_steps - t) / max(1, total_steps - warmup))))
    lo, hi = rank_blocks(batch_size, dist.rank, dist.world)
    params = list(encoder.parameters())
    for p in params:                                  # a rank without edges in a batch still all-reduces zeros
        p.grad = torch.zeros_like(p)
    history = []
    for _ in range(epochs):
        total = 0.0
        for _ in range(steps):
            head, tail = sampler.sample(batch_size, generator)
            negatives = negative_positions(batch_size, negative_rate, generator)[:, lo:hi] - lo
            optimizer.zero_grad(set_to_none=False)
            if hi > lo:
                both = encoder(inputs[torch.cat([head[lo:hi], tail[lo:hi]]).to(device)])
                loss = umap_loss(both[:hi - lo], both[hi - lo:], a, b, negatives.to(device), batch_size)
                loss.backward()
                loss = loss.detach()
            else:
                loss = torch.zeros((), device=device)
            if dist.active:
                flat = dist.all_reduce(torch.cat([p.grad.reshape(-1) for p in params] + [loss.reshape(1)]))
                offset = 0
                for p in params:
                    p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()
                loss = flat[-1]
            optimizer.step()
            schedule.step()
            total += loss.item()
        history.append(total / steps)
    return history


def spectral_targets(graph: scipy.sparse.coo_matrix, pcs: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """The spectral embedding (N, dim) of a fuzzy graph (N, N), each column standardised: the eigenvectors of the
    normalised Laplacian with the smallest non-zero eigenvalues, umap-learn's ``spectral_layout`` (its layout
    initialisation; a graph of several components gets umap-learn's per-component layout, which places the
    components by their centroids in ``pcs`` (N, p), and an eigensolver that fails falls back to random
    coordinates with umap-learn's warning)."""
    from umap.spectral import spectral_layout

    with warnings.catch_warnings(), torch_threads_kept():
        warnings.filterwarnings("ignore", message=".*Spectral initialisation failed.*")
        layout = spectral_layout(np.ascontiguousarray(pcs.detach().cpu().double().numpy()), graph.tocsr(), dim,
                                 np.random.RandomState(int(seed) % 2**32))
    target = torch.from_numpy(np.asarray(layout, dtype=np.float64)).float()
    return (target - target.mean(0)) / target.std(0).clamp_min(1e-12)


def distill_encoder(encoder: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, steps: int, lr: float,
                    generator: torch.Generator) -> float:
    """Regress ``encoder`` from ``inputs`` (N, p) onto ``targets`` (N, d): mean squared error, ``steps`` Adam steps
    with a linear decay, on batches of max(256, N / 50) rows taken in turn from random permutations. Returns the
    relative squared error ``sum |f(x) - t|^2 / sum |t - mean t|^2`` after the fit.

    Every process of a multi-process run does the same regression on the same gathered rows from the same seed (it
    is cheap beside the UMAP epochs), so they hold the same encoder.
    """
    n = inputs.shape[0]
    batch = min(n, max(256, -(-n // 50)))
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1 - t / steps))
    targets = targets.to(inputs.device)
    order, at = torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if at + batch > n:
            order, at = torch.randperm(n, generator=generator), 0
        rows = order[at:at + batch].to(inputs.device)
        at += batch
        loss = (encoder(inputs[rows]) - targets[rows]).pow(2).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        residual = (encoder(inputs) - targets).pow(2).sum()
        return float(residual / (targets - targets.mean(0)).pow(2).sum().clamp_min(1e-12))


class ParametricUMAPReducer(Reducer):
    """``--reduce pumap``: see the module docstring.

    State (checkpointable, and what :meth:`transform` needs): ``{"mean": (F,), "basis": (F, p), "encoder":
    {name: tensor}, "out_mean": (d,), "out_whiten": (d, d), "loss": [per-epoch loss]}``: the points are the
    encoder's outputs, whitened (:func:`output_whitening`).

    Under torchrun (``dist``) every step is sharded (``shardable``): each rank gets its own rows' features; the PCA,
    the input scale and the output whitening are all-reduced sums; the kNN graph is built from the gathered PCs (N x
    p, the one gathered thing: one faiss index, each rank querying its own rows); the encoder trains data-parallel
    (:func:`train_encoder`); each rank encodes its own rows. A multi-process round is the one-process round up to the
    order of float sums.
    """

    name = "pumap"
    shardable = True

    def __init__(self, dim: int = 10, pca_dim: int = 50, n_neighbors: int = 20, min_dist: float = 0.0, *,
                 hidden: int = 128, epochs: int = 10, warm_epochs: int = 3, negative_rate: int = 5,
                 batch_size: int = 2048, lr: float = 3e-3, init: str = "spectral", device: torch.device | None = None,
                 dist: Distributed | None = None):
        check_umap_options(dim, pca_dim, n_neighbors, min_dist)
        if init not in PUMAP_INITS:
            raise OptionError("init", f"init must be one of {', '.join(PUMAP_INITS)}, got {init!r}")
        for name, value, least in (("epochs", epochs, 1), ("warm_epochs", warm_epochs, 0), ("hidden", hidden, 1)):
            if value < least:
                raise OptionError(name, f"{name} must be >= {least}, got {value}")
        self.dim, self.pca_dim, self.n_neighbors, self.min_dist = int(dim), int(pca_dim), int(n_neighbors), min_dist
        self.hidden, self.epochs, self.warm_epochs = int(hidden), int(epochs), int(warm_epochs)
        self.negative_rate, self.batch_size, self.lr, self.device = int(negative_rate), int(batch_size), lr, device
        self.a, self.b = fit_ab(min_dist)
        self.init = init
        self.dist = dist or Distributed()

    def reduce(self, features: torch.Tensor, *, seed: int, warm_state: dict | None = None) -> Reduction:
        """The round's points (M, d') for this process's rows ``features`` (M, F) (all N rows in one process)."""
        start = time.perf_counter()
        dist = self.dist
        sizes = dist.row_counts(features.shape[0])
        n, first = sum(sizes), sum(sizes[:dist.rank])                       # N, and where this rank's rows start
        if n <= self.n_neighbors:
            raise OptionError("n_neighbors", f"the parametric UMAP space with n_neighbors={self.n_neighbors} needs "
                              f"more than {self.n_neighbors} points, got N={n}; lower n_neighbors")
        device = self.device or features.device
        features = features.to(device)
        allreduce = dist.all_reduce if dist.active else None
        mean, basis = scaled_pca_frame(features, self.pca_dim, allreduce=allreduce, device=device)   # (F,), (F, p)
        own = project(features, mean, basis)                                              # (M, p), as transform does
        # every rank holds all N PCs (N x p, small beside the features): the kNN index, and the tails and negatives
        # its edges reach; it queries and smooths only its own rows, and the graph is the union of all ranks' rows
        pcs = dist.gather_rows(own)                                                       # (N, p)
        distances, indices = nearest_neighbors(pcs, self.n_neighbors, rows=torch.arange(first, first + own.shape[0]))
        graph = fuzzy_union(dist.gather_rows(smooth_knn(distances)), dist.gather_rows(indices))
        sampler = EdgeSampler(graph)

        generator = torch.Generator().manual_seed(int(seed))
        encoder = new_encoder(pcs.shape[1], self.hidden, self.dim, generator)
        warm = warm_state is not None and warm_state["basis"].shape == basis.shape
        if warm:
            encoder.load_state_dict(rebase_first_layer(warm_state, mean, basis))
        encoder = encoder.to(device)
        epochs = self.warm_epochs if warm else self.epochs
        init_error = None
        with torch.enable_grad():
            if not warm and self.init == "spectral":
                init_error = distill_encoder(encoder, pcs, spectral_targets(graph, pcs, self.dim, seed),
                                             steps=DISTILL_STEPS, lr=self.lr, generator=generator)
            history = train_encoder(encoder, pcs, sampler, epochs=epochs, a=self.a, b=self.b,
                                    negative_rate=self.negative_rate, batch_size=min(self.batch_size, len(sampler)),
                                    lr=self.lr, generator=generator, dist=dist)
        weights = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
        with torch.no_grad():
            raw = encode(weights, own)                                                    # (M, dim)
        if not dist.all_reduce(torch.isfinite(raw).all().double().reshape(1)).item() == dist.world:
            raise ValueError("the parametric UMAP encoder produced non-finite coordinates; check the features "
                             "(NaN/inf rows) or use the 'umap' or 'pca' space")
        out_mean, out_whiten = output_whitening(raw, allreduce=allreduce)
        state = {"mean": mean, "basis": basis, "encoder": weights, "out_mean": out_mean, "out_whiten": out_whiten,
                 "loss": history}
        points = whiten_output(raw, state)
        info = {"reduce_dim": int(points.shape[1]), "pumap_warm": warm, "pumap_epochs": epochs, "pumap_edges": len(sampler),
                "pumap_loss": history[-1] if history else None, "pumap_init_error": init_error}
        return Reduction(points.to(features.device), state, time.perf_counter() - start, info)

    def transform(self, features: torch.Tensor, state: dict | None) -> torch.Tensor:
        if state is None:
            raise ValueError("the parametric UMAP space has no fitted encoder yet (transform before the first round)")
        pcs = project(features, state["mean"], state["basis"])
        return whiten_output(encode(state["encoder"], pcs), state)

    def pair_loss(self, view_a: torch.Tensor, view_b: torch.Tensor, state: dict | None,
                  generator: torch.Generator) -> torch.Tensor:
        """UMAP's cross-entropy (:func:`umap_loss`) in the round's space (encoder fixed) with the two views of each
        image (B, F) as the positive pair and ``negative_rate`` shuffles of the batch (:func:`negative_positions`,
        drawn from ``generator``) as negatives; its gradient reaches the trunk through the views."""
        y_a, y_b = self.transform(view_a, state), self.transform(view_b, state)
        negatives = negative_positions(len(y_a), self.negative_rate, generator).to(y_a.device)
        return umap_loss(y_a, y_b, self.a, self.b, negatives, len(y_a))


def scaled_pca_frame(features: torch.Tensor, pca_dim: int, *,
                     allreduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's input frame for features (M, F) (the rows of all processes with ``allreduce``): the mean (F,)
    and the PCA basis (F, p) scaled by one factor so that the inputs have unit mean variance per component.

    One scale for all components (not whitening, which would blow up the noise directions), whatever the trunk's
    feature scale: a random-init vgg-small's features are ~0.02, which left the first layer's biases in charge and
    the encoder's output of rank < d.
    """
    mean, basis = Whitener(dim=pca_dim, whiten=False, l2=False, allreduce=allreduce).fit(
        features, device).folded_projection(torch.device("cpu"))
    n = summed(torch.tensor([float(features.shape[0])], dtype=torch.float64), allreduce)
    square_sum = summed(project(features, mean, basis).double().pow(2).sum().reshape(1).cpu(), allreduce)
    return mean, basis / (square_sum / (n * basis.shape[1])).sqrt().clamp_min(1e-12).float()


# reduce and transform share these two steps (and encode), so a training image is mapped as it was clustered
def project(features: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Features (B, F) in a round's scaled PCA frame (B, p)."""
    return (features.float() - mean.to(features.device)) @ basis.to(features.device)


def whiten_output(raw: torch.Tensor, state: dict) -> torch.Tensor:
    """Encoder outputs (B, dim) -> the round's points (B, d'), with its :func:`output_whitening`."""
    return (raw - state["out_mean"].to(raw.device)) @ state["out_whiten"].to(raw.device)


def output_whitening(points: torch.Tensor, floor: float = 1e-6,
                     allreduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (d,), W (d, d')) with ``(points - mean) @ W`` of identity covariance: PCA whitening onto the d' <= d
    directions whose variance exceeds ``floor`` x the largest. ``allreduce`` sums the moments over the processes
    that each hold some rows of ``points`` (M, d).

    With min_dist 0, UMAP's loss rewards pulling a cluster onto a point; a parametric encoder can do that exactly
    (saturated ReLUs), and its output then spans fewer than d directions: the DP's data covariance, which scales
    its prior, stopped being positive definite in a CIFAR-10 run (round 2). A full-covariance DP with a prior
    scaled from the data covariance is affine-invariant, so whitening changes nothing in the model; dropping the
    directions the encoder does not use keeps it well posed.
    """
    mean, eigvals, eigvecs = principal_axes(points, floor, allreduce)
    return mean.float().cpu(), (eigvecs / eigvals.sqrt()).float().cpu()


def rebase_first_layer(previous: dict, mean: torch.Tensor, basis: torch.Tensor) -> dict[str, torch.Tensor]:
    """The previous encoder's weights with its first layer re-expressed for inputs in a new PCA frame.

    Old input ``U_old^T (f - mu_old)``, new input ``z = U_new^T (f - mu_new)`` (the bases are scaled orthonormal
    ones, see :meth:`ParametricUMAPReducer.reduce`); on the new span ``f - mu_new = U_new (U_new^T U_new)^-1 z``, so
    ``W1' = W1 U_old^T U_new (U_new^T U_new)^-1`` and ``b1' = b1 + W1 U_old^T (mu_new - mu_old)`` give the old
    encoder's output for every point of that span.
    """
    weights = {k: v.clone() for k, v in previous["encoder"].items()}
    w1 = weights["0.weight"].double()                                                   # (h, p)
    old_basis, new_basis = previous["basis"].double(), basis.double()                   # (F, p)
    back = new_basis @ torch.linalg.inv(new_basis.T @ new_basis)                        # (F, p): z -> f - mu_new
    weights["0.weight"] = (w1 @ old_basis.T @ back).float()
    weights["0.bias"] = (weights["0.bias"].double() + w1 @ (old_basis.T @ (mean - previous["mean"]).double())).float()
    return weights


__all__ = ["DISTILL_STEPS", "EdgeSampler", "NEGATIVE_BLOCK", "PUMAP_INITS", "ParametricUMAPReducer", "distill_encoder",
           "encode", "fit_ab", "fuzzy_graph", "fuzzy_union", "negative_positions", "new_encoder", "output_whitening",
           "project", "rank_blocks", "rebase_first_layer", "scaled_pca_frame", "smooth_knn", "spectral_targets",
           "train_encoder", "umap_loss", "whiten_output"]
