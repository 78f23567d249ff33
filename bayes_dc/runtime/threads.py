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
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads in torch and faiss (None: leave the libraries' defaults)."""
    if not threads:
        return
    torch.set_num_threads(threads)
    import faiss
    faiss.omp_set_num_threads(threads)


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Give torch back the thread count it had on entry, whatever the code inside did to the shared OpenMP
    runtime (numba through umap-learn, see the module docstring)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)   # also MKL's count, which numba leaves alone


__all__ = ["set_threads", "torch_threads_kept"]
