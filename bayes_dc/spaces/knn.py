"""The one k-nearest-neighbour search of the clustering spaces: exact Euclidean neighbours by faiss.

Every space that needs neighbours goes through :func:`nearest_neighbors`: the UMAP layout's warm-start probe
(:mod:`bayes_dc.spaces.umap`), its out-of-sample interpolation, and the parametric space's kNN graph
(:mod:`bayes_dc.spaces.parametric`). The search is exact (faiss ``IndexFlatL2``); an approximate index would be a
parameter here if a space ever needed one.
"""
from __future__ import annotations

import numpy as np
import torch


def nearest_neighbors(reference: torch.Tensor | np.ndarray, k: int, *, queries: torch.Tensor | np.ndarray | None = None,
                      rows: torch.Tensor | np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest ``reference`` rows (N, p) of each query, by Euclidean distance.

    The queries are either new points ``queries`` (B, p), or the reference's own rows ``rows`` (B,) int ids
    (default, when neither is given: every row), in which case column 0 is the row itself: a duplicate point that
    faiss ranks before it is moved behind it, and a row with more than k - 1 duplicates keeps itself and its k - 1
    first duplicates. Pass k + 1 and drop column 0 for the k nearest *other* points.

    Returns (distances (B, k) float32, ids (B, k) int64 into ``reference``), CPU tensors, nearest first. faiss
    ``IndexFlatL2``; on the GPU when ``reference`` is a CUDA tensor and faiss was built with GPU support.
    """
    import faiss   # imported here, as the k-means backend does: `import bayes_dc` works without faiss

    if queries is not None and rows is not None:
        raise ValueError("nearest_neighbors takes queries (new points) or rows (ids of reference rows), not both")
    gpu = reference.device if isinstance(reference, torch.Tensor) and reference.is_cuda else None
    x = np.ascontiguousarray(torch.as_tensor(reference).detach().float().cpu().numpy())          # (N, p)
    own = None
    if queries is None:
        own = np.arange(len(x)) if rows is None else torch.as_tensor(rows).cpu().numpy().astype(np.int64)
        queries = x[own]
    queries = np.ascontiguousarray(torch.as_tensor(queries).detach().float().cpu().numpy())     # (B, p)
    index = faiss.IndexFlatL2(x.shape[1])
    if gpu is not None and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu.index or 0, index)
    index.add(x)
    sq_dist, idx = index.search(queries, k)                                                        # (B, k) each
    if own is not None:
        # a duplicate point can come before the point itself: put each row's own id first
        for r in np.flatnonzero(idx[:, 0] != own):
            where = np.flatnonzero(idx[r] == own[r])
            j = where[0] if len(where) else k - 1
            idx[r, 1:j + 1], sq_dist[r, 1:j + 1] = idx[r, :j].copy(), sq_dist[r, :j].copy()
            idx[r, 0], sq_dist[r, 0] = own[r], 0.0
    return torch.from_numpy(np.sqrt(np.maximum(sq_dist, 0))), torch.from_numpy(idx.astype(np.int64))


__all__ = ["nearest_neighbors"]
