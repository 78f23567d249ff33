"""Several processes (torchrun, gloo on the CPU) against one: the same batches, gradients, clustering and metrics.

The first tests need no process group (how a global batch is shared, augmentation of a share); the gradient test
starts two processes with ``torch.multiprocessing``; the run tests launch ``torchrun --standalone --nproc-per-node 2
experiments/run.py`` (about 15-20 s each on 2 cores).
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bayes_dc import pipeline
from bayes_dc.augment import Augmenter
from bayes_dc.config import merge
from bayes_dc.distributed import (CPUSyncBatchNorm, Distributed, check_batch_size, convert_sync_batchnorm,
                                  wrap_ddp)
from bayes_dc.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parent.parent


# ---- sharing a global batch ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch, world", [(20, 8, 2), (21, 8, 2), (23, 6, 3), (17, 4, 4), (7, 4, 2)])
def test_ranks_share_each_global_batch_in_order(n, batch, world):
    """Concatenating the ranks' rows of each step gives that step's global batch, at the offsets they report."""
    indices = torch.randperm(100, generator=torch.Generator().manual_seed(n))[:n]
    shares = [Distributed(rank=r, world=world).share_batches(indices, batch) for r in range(world)]
    one, _, one_steps = Distributed().share_batches(indices, batch)
    assert torch.equal(one, indices) and one_steps == [(0, min(batch, n - s)) for s in range(0, n, batch)]
    assert all(local_batch == batch // world for _, local_batch, _ in shares)
    n_steps = len(shares[0][2])
    assert all(len(s[2]) == n_steps == len(s[0].split(s[1])) for s in shares)   # chunks of B / W are the steps
    for step in range(n_steps):
        parts = [s[0].split(s[1])[step] for s in shares]
        offsets = [s[2][step][0] for s in shares]
        size = shares[0][2][step][1]
        glob = indices[step * batch: step * batch + size]
        assert torch.equal(torch.cat(parts), glob)
        assert offsets == list(np.cumsum([0] + [p.shape[0] for p in parts[:-1]]))
    dropped = n % batch if n % batch < world else 0     # a last batch too short to give every rank a row
    assert sum(s[0].shape[0] for s in shares) == n - dropped


def test_indivisible_batch_size_is_refused_naming_the_option():
    check_batch_size(64, 2)
    with pytest.raises(ValueError, match=r"--batch-size 30 is not divisible by the 4 processes.*multiple of 4"):
        check_batch_size(30, 4)


def test_shards_cover_the_rows_in_rank_order():
    assert [Distributed(rank=r, world=3).shard(10) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]


@pytest.mark.parametrize("kind", ["crop-flip", "resized-crop", "none"])
def test_augmenting_shares_equals_augmenting_the_global_batch(kind):
    """Each rank draws the random numbers of the whole batch and keeps its rows: the same pixels as one process."""
    images = torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8)
    augment = Augmenter(kind)
    whole = augment(images, torch.Generator().manual_seed(5))
    parts = [augment(images[lo:hi], torch.Generator().manual_seed(5), (lo, 10)) for lo, hi in ((0, 4), (4, 10))]
    assert torch.equal(torch.cat(parts), whole)


# ---- one training step: DDP + synchronised batch norm on the CPU --------------------------------------------------


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5), torch.nn.BatchNorm1d(5))


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> dict:
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), y) * weight
    loss.backward()
    inner = model.module if hasattr(model, "module") else model
    return {**{f"grad.{k}": p.grad.clone() for k, p in inner.named_parameters()},
            **{f"buffer.{k}": b.clone() for k, b in inner.named_buffers()}}


def _worker(rank: int, world: int, port: int, x: torch.Tensor, y: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = wrap_ddp(convert_sync_batchnorm(_model(), torch.device("cpu")), torch.device("cpu"))
    assert sum(isinstance(m, CPUSyncBatchNorm) for m in model.modules()) == 2
    lo, hi = Distributed(rank=rank, world=world).shard(x.shape[0])   # unequal shares: 5 and 4 rows of 9
    result = _step(model, x[lo:hi], y[lo:hi], weight=(hi - lo) * world / x.shape[0])
    torch.save(result, f"{out}.{rank}")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_with_synchronised_batch_norm_gives_the_one_process_gradients(tmp_path):
    x, y = torch.randn(9, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(9) % 5
    torch.set_num_threads(1)
    try:
        expected = _step(_model(), x, y)
    finally:
        torch.set_num_threads(2)
    mp.start_processes(_worker, args=(2, _free_port(), x, y, str(tmp_path / "r")), nprocs=2, start_method="spawn")
    for rank in range(2):
        got = torch.load(tmp_path / f"r.{rank}", weights_only=True)
        assert got.keys() == expected.keys()
        for key in expected:   # gradients all-reduced by DDP, running statistics of the global batch
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


# ---- whole runs: torchrun with 2 processes against 1 ------------------------------------------------------------


@pytest.fixture
def one_thread():
    """torchrun gives each process one thread: the 1-process reference runs on one too, then the test process gets
    its thread counts back."""
    import faiss

    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(faiss_threads)


def torchrun(cfg, tmp_path: Path, processes: int = 2) -> subprocess.CompletedProcess:
    path = tmp_path / f"{cfg.run.name}.json"
    cfg.to_json(path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
           str(ROOT / "experiments" / "run.py"), "--config", str(path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_kmeans_run_on_two_processes_follows_the_one_process_run(tiny_config, tmp_path, one_thread):
    """One epoch of DeepCluster with k-means, 1 process vs torchrun with 2 (gloo).

    Round 0 clusters the same random-init trunk: features are extracted per shard (eval mode: row by row the same),
    the PCA sums are all-reduced and rank 0 runs faiss on the gathered points, so its labels are the 1-process
    labels. The epoch then trains on the same global batches (each rank half of each) with DDP and synchronised
    batch norm: the same gradients up to the order of float sums. Tolerance: this width-4 trunk amplifies a float
    difference about 200-fold per SGD step (the 1-process run itself, on 1 thread vs 2, ends 4e-5 apart after 2
    steps of 64 images and 1e-2 apart after 4), so the epoch is 2 steps of 150 images; after them the weights of
    the two runs agree to 1e-5 (measured: 9e-7) and the final clustering is the same. kNN accuracy may differ by a
    near-tie vote or two (see below).
    """
    cfg = merge(tiny_config, {"train": {"epochs": 1, "batch_size": 150},
                              "run": {"threads": 1, "knn_every": 1, "device": "cpu"}})
    pipeline.run(merge(cfg, {"run": {"name": "one"}}))
    torchrun(merge(cfg, {"run": {"name": "two"}}), tmp_path)
    runs = tmp_path / "runs"
    one, two = read_jsonl(runs / "one" / "metrics.jsonl"), read_jsonl(runs / "two" / "metrics.jsonl")
    env = json.loads((runs / "two" / "environment.json").read_text())
    assert env["world_size"] == 2 and not list(runs.glob("two/*rank1*"))       # rank 0 alone wrote the directory
    assert [r["epoch"] for r in two] == [0, 1] and two[1]["phase"] == "final"
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    for record_one, record_two in zip(one, two):
        for key in ("nmi", "ari", "acc", "k_used", "objective"):
            assert record_two[key] == pytest.approx(record_one[key], rel=1e-5), key
        # kNN votes on 100 eval images: features extracted in shards of 150 rather than batches of 300 differ in the
        # last bits (the conv kernels depend on the batch size), enough to flip a near-tie (measured: 1 image)
        assert record_two["knn"] == pytest.approx(record_one["knn"], abs=0.021)
    for snapshot in ("round_0000", "round_0001"):
        labels = [np.load(runs / n / "clusters" / f"{snapshot}.npz")["labels"] for n in ("one", "two")]
        assert np.array_equal(*labels), snapshot
    weights = [torch.load(runs / n / "last.pt", weights_only=True)["model"] for n in ("one", "two")]
    for key in weights[0]:
        if weights[0][key].is_floating_point():
            torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=1e-5, msg=key)


def test_a_ctrl_c_delivered_twice_at_once_is_one_stop_request():
    """torchrun forwards a terminal's Ctrl-C to workers that the terminal signalled already: within the debounce
    window the second SIGINT is the same request; after it, a SIGINT stops at once."""
    import signal
    import time

    from bayes_dc.runlog import graceful_interrupt

    with graceful_interrupt(debounce=0.5) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.requested and stop.signal_name == "SIGINT"
        time.sleep(0.5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
