"""What tests/test_distributed.py computes in two processes (gloo), and the same computations in one process.

Kept apart from the test module so that the spawned processes import only this (torch, the distributed helpers and
the DP engine), not the whole pipeline. :func:`run_two_ranks` starts both ranks once and saves what each computed;
the ``single_*`` functions compute the one-process references.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from bayes_dc.clustering.dpgmm import DPGMM, ShardedDPGMM
from bayes_dc.runtime.distributed import (CPUSyncBatchNorm, Distributed, convert_sync_batchnorm, join_group, shutdown, wrap_ddp)

COVARIANCES = ("diag", "full", "mfa")
DP_OPTIONS = dict(truncation=20, max_iter=40)


# ---- one training step ---------------------------------------------------------------------------------------


def step_data() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(9, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(9) % 5


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5), torch.nn.BatchNorm1d(5))


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> dict:
    """Gradients and buffers (running statistics) after one backward pass of ``weight`` x the mean loss."""
    model.train()
    (torch.nn.functional.cross_entropy(model(x), y) * weight).backward()
    inner = model.module if hasattr(model, "module") else model
    return {**{f"grad.{k}": p.grad.clone() for k, p in inner.named_parameters()},
            **{f"buffer.{k}": b.clone() for k, b in inner.named_buffers()}}


def single_step() -> dict:
    return train_step(small_model(), *step_data())


# ---- DP fits -------------------------------------------------------------------------------------------------


def dp_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rounds of features (N = 2,201, d = 5, six clusters): in the second, half of the largest cluster has moved
    away, so the warm-started fit must split a component."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, size=(6, 5))
    labels = np.repeat(np.arange(6), [700, 500, 400, 300, 200, 101])
    x0 = (centres[labels] + rng.normal(size=(labels.size, 5))).astype(np.float32)
    x1 = x0.copy()
    x1[np.flatnonzero(labels == 0)[:350]] += 12.0
    order = rng.permutation(labels.size)
    return torch.from_numpy(x0[order]), torch.from_numpy(x1[order])


def fitted(engine: DPGMM) -> dict:
    return {"counts": engine.counts_.cpu(), "means": engine.means_.cpu(), "weights": engine.weights_.cpu(),
            "labels": engine.labels_.cpu(), "resp_values": engine.resp_values_.cpu(),
            "resp_index": engine.resp_index_.cpu(), "elbo": engine.lower_bound_, "n_iter": engine.n_iter_,
            "moves": engine.moves_, "permutation": torch.as_tensor(engine.permutation_)}


def dp_rounds(make, rows: slice) -> dict:
    """A cold fit of round 0 and a fit of round 1 warm-started from it, per covariance; ``rows``: this rank's."""
    x0, x1 = dp_data()
    out = {}
    for covariance in COVARIANCES:
        first = make(covariance).fit(x0[rows], seed=3)
        second = make(covariance).fit(x1[rows], seed=4, warm_state=first.state_)
        out[covariance] = (fitted(first), fitted(second))
    return out


def single_dp() -> dict:
    return dp_rounds(lambda covariance: DPGMM(covariance=covariance, **DP_OPTIONS), slice(None))


SMALL = 30   # points of the small fit: fewer than T = 20 on each of two ranks, not in all


def small_fit(make, rows: slice) -> dict:
    return fitted(make("diag").fit(dp_data()[0][:SMALL][rows], seed=5))


def single_small() -> dict:
    return small_fit(lambda covariance: DPGMM(covariance=covariance, **DP_OPTIONS), slice(None))


# ---- the two ranks -------------------------------------------------------------------------------------------


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    join_group("gloo", rank=rank, world_size=world)
    ranks = Distributed(rank=rank, world=world)
    model = wrap_ddp(convert_sync_batchnorm(small_model(), torch.device("cpu")), torch.device("cpu"))
    converted = sum(isinstance(m, CPUSyncBatchNorm) for m in model.modules())
    x, y = step_data()
    lo, hi = ranks.shard(x.shape[0])   # unequal shares: 5 and 4 rows of 9
    step = train_step(model, x[lo:hi], y[lo:hi], weight=(hi - lo) * world / x.shape[0])
    lo, hi = ranks.shard(dp_data()[0].shape[0])
    def sharded(covariance: str) -> ShardedDPGMM:
        return ShardedDPGMM(ranks, covariance=covariance, **DP_OPTIONS)

    fits = dp_rounds(sharded, slice(lo, hi))
    small = small_fit(sharded, slice(*ranks.shard(SMALL)))
    ranks.broadcast_object(converted)   # a run's last collective (its final kNN score)
    del model
    shutdown()
    torch.save({"converted": converted, "step": step, "dp": fits, "small": small,
                "gloo_threads_after_shutdown": gloo_threads()}, f"{out}.{rank}")


def gloo_threads() -> list[str]:
    """Names of this process's threads that belong to gloo (``pt_gloo_runloop``, ``gloo_tcp_loop``; Linux)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:   # the thread ended meanwhile
            pass
    return [name for name in names if "gloo" in name]


def run_two_ranks(folder: Path) -> list[dict]:
    """Start two gloo processes that compute :func:`train_step` on their shares (DDP + synchronised batch norm)
    and :func:`dp_rounds` on their shards (:class:`ShardedDPGMM`); return what each computed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(2, port, str(folder / "rank")), nprocs=2, start_method="spawn")
    return [torch.load(folder / f"rank.{r}", weights_only=False) for r in range(2)]
