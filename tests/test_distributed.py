"""Several processes (torchrun, gloo on the CPU) against one: the same batches, gradients, clustering and metrics.

The first tests need no process group (how a global batch is shared, augmentation of a share); a training step
and DP fits run in two processes started once with ``torch.multiprocessing`` (``_two_ranks.py``); the run tests
launch ``torchrun --standalone --nproc-per-node 2 experiments/run.py`` (about 15-20 s each on 2 cores).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from bayes_dc.loop import pipeline
from bayes_dc.data.augment import Augmenter
from bayes_dc.config.schema import merge
from bayes_dc.runtime.distributed import Distributed, check_batch_size
from bayes_dc.rundir.jsonl import read_jsonl
from _two_ranks import COVARIANCES, run_two_ranks, single_dp, single_small, single_step

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


@pytest.mark.parametrize("shape, cut", [((10, 3, 12, 12), 4), ((300, 1, 28, 28), 150)], ids=["rgb", "grey-run"])
@pytest.mark.parametrize("kind", ["crop-flip", "resized-crop", "none"])
def test_augmenting_shares_equals_augmenting_the_global_batch(kind, shape, cut):
    """Each rank draws the random numbers of the whole batch and keeps its rows: the same pixels as one process, bit
    for bit (also for the batch of the two-process run test: 300 grey 28-px images, 150 per rank)."""
    n = shape[0]
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    augment = Augmenter(kind)
    whole = augment(images, torch.Generator().manual_seed(5))
    parts = [augment(images[lo:hi], torch.Generator().manual_seed(5), (lo, n)) for lo, hi in ((0, cut), (cut, n))]
    assert torch.equal(torch.cat(parts), whole)


# ---- two gloo processes against one: a training step, DP fits ------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What two spawned ranks computed (``_two_ranks``): started once for the tests below (about 10 s)."""
    return run_two_ranks(tmp_path_factory.mktemp("two_ranks"))


@pytest.fixture
def one_thread_here():
    """The one-process references on one thread, as each rank runs (then the test process gets its threads back)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ddp_with_synchronised_batch_norm_gives_the_one_process_gradients(two_ranks, one_thread_here):
    """Ranks holding 5 and 4 of 9 images, each loss weighted by its share: DDP's averaged gradients and the running
    statistics of the synchronised batch norms (2-D and 1-D) are those of one process on all 9."""
    expected = single_step()
    for rank in two_ranks:
        assert rank["converted"] == 2 and rank["step"].keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(rank["step"][key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_sharded_dp_fit_equals_the_one_process_fit(two_ranks, one_thread_here, covariance):
    """Each rank fits its half of the points (ShardedDPGMM): a cold start (global subsample, merges, births tried)
    and a warm start that must split a component. Both ranks hold the one-process posterior: the same moves tried
    and accepted, the same labels and top-k ids (where their mass is above 1e-6), sufficient statistics and weights equal to float32 summation
    order (the E-step runs in float32 over differently cut chunks; sums are float64), the ELBO to 1e-5 relative
    (its responsibility entropy adds N float32 terms per chunk; measured 3e-6)."""
    expected = single_dp()[covariance]
    assert expected[1]["moves"]["split"]["accepted"] >= 1 and expected[0]["moves"]["birth"]["tried"] >= 1
    for rank in two_ranks:
        for got, want in zip(rank["dp"][covariance], expected):
            assert got["moves"] == want["moves"] and got["n_iter"] == want["n_iter"]
            assert torch.equal(got["labels"], want["labels"])
            # empty components all equal the prior, so their (negligible) responsibilities tie and top-k may order them
            # differently over differently cut chunks: the ids are compared where the mass is not negligible
            held = want["resp_values"] > 1e-6
            assert torch.equal(got["resp_index"][held], want["resp_index"][held])
            assert torch.equal(got["permutation"], want["permutation"])
            torch.testing.assert_close(got["resp_values"], want["resp_values"], rtol=0, atol=1e-5)
            torch.testing.assert_close(got["counts"], want["counts"], rtol=1e-6, atol=1e-4)
            torch.testing.assert_close(got["weights"], want["weights"], rtol=1e-6, atol=1e-9)
            torch.testing.assert_close(got["means"], want["means"], rtol=1e-5, atol=1e-5)
            assert got["elbo"] == pytest.approx(want["elbo"], rel=1e-5)


def test_shutdown_frees_the_process_group_while_the_interpreter_is_alive(two_ranks):
    """After DDP, a last broadcast and ``shutdown()``, no gloo thread is left. A group that outlives ``shutdown()``
    keeps its worker threads into interpreter exit, where one still releasing the last collective's tensors needs
    the GIL, is ended inside a C++ destructor and aborts the finished run (SIGABRT, ``terminate called without an
    active exception``); DDP's import of ``torch.distributed.nn`` after the group exists pinned it so."""
    for rank in two_ranks:
        assert rank["gloo_threads_after_shutdown"] == []


def test_a_cold_start_needs_t_points_over_all_ranks_not_on_each(two_ranks, one_thread_here):
    """30 points, T = 20: each rank holds 15 (fewer than T), together enough for the global seeding subsample."""
    expected = single_small()
    for rank in two_ranks:
        assert torch.equal(rank["small"]["labels"], expected["labels"])
        torch.testing.assert_close(rank["small"]["weights"], expected["weights"], rtol=1e-6, atol=1e-9)


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


# a tight tol: the two runs are compared at the fixed point, where float-order differences do not grow with the stop
DP_RUN = {"cluster": {"prior": "dp", "truncation": 20, "max_iter": 30, "tol": 1e-6,
                      "warm_start": "init"},
          "targets": {"targets": "soft", "head": "keep"}, "features": {"pca_dim": 8}}


@pytest.mark.parametrize("overrides", [{}, DP_RUN], ids=["kmeans", "dp-soft-keep"])
def test_run_on_two_processes_follows_the_one_process_run(tiny_config, tmp_path, one_thread, overrides):
    """One epoch of DeepCluster, 1 process vs torchrun with 2 (gloo), with k-means or the DP-GMM.

    Round 0 clusters the same random-init trunk: features are extracted per shard (eval mode: row by row the same),
    the PCA sums are all-reduced, then k-means runs on rank 0 over the gathered points, or each rank fits the DP on
    its shard with all-reduced statistics (ShardedDPGMM): the 1-process labels and responsibilities either way. The
    epoch then trains on the same global batch (each rank half of it, augmented as in one process) with DDP and
    synchronised batch norm: the same gradients up to the order of float sums. The epoch is one step of all 300
    images, taken by both runs from the same weights, so the weights after it agree to 1e-5 (measured: 3e-7 k-means,
    1e-7 DP) and the final clustering (warm-started for the DP) is the same partition. A second step would start from
    weights 1e-7 apart, enough to tip a ReLU whose input is within 1e-6 of zero, which reroutes its gradient: with
    two steps of 150 resized crops one such unit (-9e-7 in one run, +1.3e-6 in the other) moved a first-layer
    gradient by 3% and left the weights 8e-5 apart (crop-flip's batches: 9e-7). Whether a batch holds one is
    chance, not plumbing; it is probably also why the 1-process run on 1 thread vs 2 ends 4e-5 apart after 2 steps
    of 64 images and 1e-2 after 4. kNN accuracy may differ by a near-tie vote or two (see below).
    """
    cfg = merge(merge(tiny_config, {"train": {"epochs": 1, "batch_size": 300},
                                    "run": {"threads": 1, "knn_every": 1, "device": "cpu"}}), overrides)
    pipeline.run(merge(cfg, {"run": {"name": "one"}}))
    torchrun(merge(cfg, {"run": {"name": "two"}}), tmp_path)
    runs = tmp_path / "runs"
    one, two = read_jsonl(runs / "one" / "metrics.jsonl"), read_jsonl(runs / "two" / "metrics.jsonl")
    env = json.loads((runs / "two" / "environment.json").read_text())
    assert env["world_size"] == 2 and not list(runs.glob("two/*rank1*"))       # rank 0 alone wrote the directory
    assert [r["epoch"] for r in two] == [0, 1] and two[1]["phase"] == "final"
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    # round 0 clusters identical features: the same clustering, its objective to float32 summation order
    a, b = (np.load(runs / n / "clusters" / "round_0000.npz") for n in ("one", "two"))
    assert np.array_equal(a["labels"], b["labels"]) and np.array_equal(a["resp_index"], b["resp_index"])
    np.testing.assert_allclose(b["weights"], a["weights"], atol=1e-6)
    np.testing.assert_allclose(b["resp_values"].astype(np.float32), a["resp_values"].astype(np.float32),
                               atol=1e-3)                                        # stored as float16
    assert two[0]["objective"] == pytest.approx(one[0]["objective"], rel=1e-5)
    # the final round clusters the trained trunks' features, 1e-6 apart: the same partition (component ids may
    # swap where two components are nearly equal in size: the DP numbers them by size), the same scores, and an
    # objective within 1e-3 relative (whitening stretches the small differences; measured: 8e-5)
    a, b = (np.load(runs / n / "clusters" / "round_0001.npz") for n in ("one", "two"))
    assert adjusted_rand_score(a["labels"], b["labels"]) == 1.0
    np.testing.assert_allclose(np.sort(b["weights"]), np.sort(a["weights"]), atol=1e-4)
    assert two[1]["objective"] == pytest.approx(one[1]["objective"], rel=1e-3)
    for record_one, record_two in zip(one, two):
        for key in ("nmi", "ari", "acc", "k_used", "k_active"):
            assert record_two[key] == pytest.approx(record_one[key], rel=1e-9), key
        # kNN votes on 100 eval images: features extracted in shards of 150 rather than batches of 300 differ in the
        # last bits (the conv kernels depend on the batch size), enough to flip a near-tie (measured: 1 image)
        assert record_two["knn"] == pytest.approx(record_one["knn"], abs=0.021)
    weights = [torch.load(runs / n / "last.pt", weights_only=True)["model"] for n in ("one", "two")]
    for key in weights[0]:
        if weights[0][key].is_floating_point():
            torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=1e-5, msg=key)


def test_a_ctrl_c_delivered_twice_at_once_is_one_stop_request():
    """torchrun forwards a terminal's Ctrl-C to workers that the terminal signalled already: within the debounce
    window the second SIGINT is the same request; after it, a SIGINT stops at once. The window is read from a clock
    the test sets (a wall clock made this depend on how busy the machine was between two os.kill calls)."""
    import signal

    from bayes_dc.rundir.runlog import graceful_interrupt

    now = [100.0]

    def deliver() -> None:   # Python runs the handler before the next bytecode of this (the main) thread
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    with graceful_interrupt(debounce=2.0, clock=lambda: now[0]) as stop:
        deliver()
        assert stop.requested and stop.signal_name == "SIGINT" and stop.at == 100.0
        now[0] = 101.9
        deliver()                                   # 1.9 s later: the same request, nothing raised
        now[0] = 102.0
        with pytest.raises(KeyboardInterrupt):      # 2 s later: a second request, stop at once
            deliver()


def test_two_process_round_zero_on_the_parametric_space_equals_the_one_process_round(tiny_config, tmp_path,
                                                                                      one_thread):
    """--reduce pumap under torchrun, sharded: each rank projects its own rows (all-reduced PCA sums), queries them
    against the gathered PCs' kNN index, trains the encoder data-parallel on its blocks of every global edge batch
    (summed gradients) and encodes its own rows; the DP is fitted on the shards with all-reduced statistics. The
    same algorithm as one process up to the order of float sums: round 0 gives the one-process labels, and the
    encoder's loss agrees to float32 rounding (measured: 7e-8 relative)."""
    cfg = merge(tiny_config, {"cluster": {"prior": "dp", "truncation": 20, "max_iter": 30, "tol": 1e-6},
                              "features": {"reduce": "pumap", "reduce_dim": 3, "pca_dim": 8, "umap_neighbors": 10,
                                           "pumap_hidden": 16, "pumap_epochs": 2},
                              "targets": {"targets": "soft"},
                              "train": {"epochs": 1, "batch_size": 300},
                              "run": {"threads": 1, "knn_every": 0, "device": "cpu"}})
    pipeline.run(merge(cfg, {"run": {"name": "one"}}))
    torchrun(merge(cfg, {"run": {"name": "two"}}), tmp_path)
    runs = tmp_path / "runs"
    a, b = (np.load(runs / n / "clusters" / "round_0000.npz") for n in ("one", "two"))
    assert np.array_equal(a["labels"], b["labels"]) and np.array_equal(a["resp_index"], b["resp_index"])
    one, two = read_jsonl(runs / "one" / "metrics.jsonl"), read_jsonl(runs / "two" / "metrics.jsonl")
    info_one, info_two = one[0]["reduce_info"], two[0]["reduce_info"]
    assert info_two["pumap_loss"] == pytest.approx(info_one["pumap_loss"], rel=1e-5)
    assert {k: v for k, v in info_two.items() if k != "pumap_loss"} == {k: v for k, v in info_one.items()
                                                                         if k != "pumap_loss"}
    assert two[0]["objective"] == pytest.approx(one[0]["objective"], rel=1e-5)
