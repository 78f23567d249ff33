"""CPU thread counts of the libraries a run uses (torch, faiss), and keeping them where ``--threads`` put them.

Why a module: the thread count changes float sums (a reduction split over 2 threads adds in another order than
over 1), so a run that must repeat bit for bit, and a resumed run that must repeat the uninterrupted one, needs
the same count at every step. torch's count is the OpenMP setting of the calling thread, and torch shares its
OpenMP runtime (one ``libgomp``) with numba: when umap-learn ends a fit it gives numba back its thread count
(numba's default, every core), and numba's OpenMP pool applies that with ``omp_set_num_threads`` on the
caller's thread the next time it runs. torch then trained with every core after the first UMAP fit whatever
``--threads`` said, while a run resumed into an epoch without a relabel trained that epoch with ``--threads``:
the losses parted at the fourth digit and the clusterings after them (issue 18). faiss brings its own OpenMP
runtime and keeps its count.

Busy machines (issue 26): torch's OpenMP threads spin while they wait for work, so beside other busy processes a
DP fit ran many times slower than on the idle machine (experiments/bench_threads.py measures it), and a process
confined to fewer CPUs than the node has (Slurm, ``taskset``, a container's cpuset) started one thread per core of the node. :func:`thread_environment`
fixes both in the environment, which the OpenMP runtimes read once, when they load; ``import bayes_dc`` calls it
(bayes_dc/__init__.py), so it holds for run.py, assign.py and any script that imports bayes_dc before torch. This
module imports torch only inside the functions that use it, for that reason.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator, MutableMapping


def usable_cpus() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity``: a Slurm allocation, ``taskset``, a cpuset), not
    the node's count; ``os.cpu_count()`` where affinity is not available (macOS, Windows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the OpenMP settings the user did not set; return those it set (name -> value).

    ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning (measured by
    experiments/bench_threads.py). ``OMP_NUM_THREADS`` = :func:`usable_cpus`, so torch's and
    faiss's pools match the CPUs this process may use. A value already in the environment always wins.
    Effective only before torch (or faiss) is imported: the OpenMP runtimes read these once, when they load.
    """
    env = os.environ if environ is None else environ
    chosen = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(usable_cpus())}
    set_here = {name: value for name, value in chosen.items() if not env.get(name)}
    env.update(set_here)
    return set_here


def torch_loaded() -> bool:
    """Whether torch was imported before bayes_dc (then :func:`thread_environment` came too late for it)."""
    return "torch" in sys.modules


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch and faiss (None: leave the libraries' defaults)."""
    if not threads:
        return
    import torch
    torch.set_num_threads(threads)
    import faiss
    faiss.omp_set_num_threads(threads)


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Give torch back the thread count it had on entry, whatever the code inside did to the shared OpenMP
    runtime (numba through umap-learn, see the module docstring)."""
    import torch
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)   # also MKL's count, which numba leaves alone


__all__ = ["set_threads", "thread_environment", "torch_loaded", "torch_threads_kept", "usable_cpus"]
