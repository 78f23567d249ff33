"""Cold-start seeding: k-means++ on a small subsample (identical on every rank once the subsample is gathered)."""
from __future__ import annotations

import torch


def kmeanspp_seeds(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): indices (k,) of rows of x (M, d) float32.

    The loop over k is inherent to k-means++ (each pick depends on the previous ones); each step is one
    (M, d) matrix-vector product, run on a subsample, so it costs little next to one full E-step.
    """
    m = x.shape[0]
    sq_norms = (x * x).sum(1)                                                     # (M,)
    picks = torch.empty(k, dtype=torch.int64)
    picks[0] = torch.randint(m, (1,), generator=generator)
    closest = (sq_norms - 2.0 * x @ x[picks[0]] + sq_norms[picks[0]]).clamp_min(0.0)  # (M,)
    for j in range(1, k):
        weights = closest.double().cpu()
        total = float(weights.sum())
        # all remaining points coincide with a seed: pick uniformly (duplicates are then harmless)
        probs = weights / total if total > 0 else torch.full((m,), 1.0 / m, dtype=torch.float64)
        picks[j] = torch.multinomial(probs, 1, generator=generator)
        dist = (sq_norms - 2.0 * x @ x[picks[j]] + sq_norms[picks[j]]).clamp_min(0.0)
        closest = torch.minimum(closest, dist)
    return picks.to(x.device)


def nearest_centre(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index (M,) of the nearest of centres (k, d) for each row of x (M, d) (squared Euclidean distance)."""
    return ((centres * centres).sum(1) - 2.0 * x @ centres.T).argmin(1)


def lloyd(x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 5) -> torch.Tensor:
    """A few Lloyd iterations of k-means from k-means++ seeds; returns the assignment (M,) of x (M, d)."""
    centres = x[kmeanspp_seeds(x, k, generator)]
    assign = nearest_centre(x, centres)
    for _ in range(iterations):
        counts = torch.bincount(assign, minlength=k).clamp_min(1).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        centres = sums / counts[:, None]
        assign = nearest_centre(x, centres)
    return assign
