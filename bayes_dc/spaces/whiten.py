"""PCA whitening + L2 normalisation of trunk features, refitted every clustering round (the ``pca`` space's
maths, :mod:`bayes_dc.spaces.pca`), and the principal axes the UMAP and parametric spaces use.

This is DeepCluster's ``clustering.py::preprocess_features`` (Caron et al., ECCV 2018): a faiss
``PCAMatrix(F, dim, eigen_power=-0.5)`` followed by row L2 normalisation, re-stated in torch so it runs on
the features' device (GPU for ImageNet-scale N) without a faiss round trip.

Conventions:
    * The covariance is the unbiased sample covariance, sum((x - mean)^T (x - mean)) / (N - 1), the same
      convention as scikit-learn's ``PCA.explained_variance_``. With ``eps=0`` and ``l2=False`` the output
      therefore equals ``sklearn.decomposition.PCA(n_components=dim, whiten=True).fit_transform(X)`` up to
      the sign of each component. (faiss divides by N; after L2 normalisation the two agree exactly, since
      the factor is a global scale.)
    * ``eps`` is added to each eigenvalue before the inverse square root, so near-null directions are not
      blown up to noise.
    * Each component's sign is fixed so that its largest-magnitude entry is positive: the same input gives
      the same output, whatever sign the eigensolver returns.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

# Rows per chunk when streaming over X: bounds the float64 temporary of one chunk to ~256 MiB
# (8,192 rows at F = 4,096), so a 1.2M x 4,096 ImageNet feature matrix never needs a second full copy.
_CHUNK_ELEMENTS = 2**25


def _chunk_rows(n_features: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_features))


def _as_2d_float_tensor(X: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{what}: X must be a torch.Tensor or numpy array, got {type(X).__name__}")
    if X.dim() != 2:
        raise ValueError(f"{what}: X must be 2-D (N, F), got shape {tuple(X.shape)}")
    if X.shape[1] == 0:
        raise ValueError(f"{what}: X has no feature columns, shape {tuple(X.shape)}")
    if X.is_complex():
        raise TypeError(f"{what}: complex features are not supported")
    return X.detach()


def _raise_if_not_finite(bad_rows: int, first_bad: list[int], n_rows: int, what: str) -> None:
    if bad_rows:
        raise ValueError(f"{what}: X contains NaN or inf in {bad_rows} of {n_rows} rows (first rows: {first_bad}); "
                         "check the trunk for a diverged loss")


def _check_finite_chunked(X: torch.Tensor, what: str) -> None:
    """NaN/inf check in chunks, so the boolean mask never has the full (N, F) size."""
    step = _chunk_rows(X.shape[1])
    bad_rows, first_bad = 0, []
    for start in range(0, X.shape[0], step):
        bad = ~torch.isfinite(X[start:start + step]).all(dim=1)
        n_bad = int(bad.sum())
        if n_bad:
            bad_rows += n_bad
            if len(first_bad) < 5:
                first_bad += (torch.nonzero(bad)[:5 - len(first_bad), 0] + start).tolist()
    _raise_if_not_finite(bad_rows, first_bad, X.shape[0], what)


class Whitener:
    """PCA (optionally whitening) projection to ``dim`` dimensions, then optional row L2 normalisation.

    ``fit`` computes, on X's device, the mean and the covariance (float64, accumulated over row chunks),
    its eigendecomposition (``torch.linalg.eigh``) and keeps the top ``dim_`` eigenvectors. ``transform``
    maps X (N, F) to

        Z = (X - mean_) @ components_ / sqrt(explained_variance_ + eps)     (whiten=True)
        Z = (X - mean_) @ components_                                       (whiten=False)

    and, if ``l2``, divides each row of Z by its norm (clamped, so an all-zero row stays zero).

    Args:
        dim: number of principal components to keep. Capped: ``dim_ = min(dim, F, N - 1)``, since a sample
            of N points spans at most N - 1 directions around its mean (the cap is silent, every round).
            ``None`` or ``<= 0`` keeps all F dimensions (no reduction; X is still centred, rotated to the
            principal axes, which suits a diagonal-covariance mixture, and optionally whitened).
        whiten: scale each component to unit variance (DeepCluster: eigen_power = -0.5).
        l2: L2-normalise each output row.
        eps: added to the eigenvalues before the inverse square root.
        allreduce: sums a tensor over the processes of a multi-process run (``Distributed.all_reduce``); each
            process then fits on its own rows and every process gets the projection of all rows. None: one
            process (the sums are used as they are, so single-process numerics do not change).

    Fitted attributes (on the device of the data passed to ``fit``):
        mean_: (F,) float64 feature mean.
        components_: (F, dim_) float64, orthonormal columns, largest eigenvalue first.
        explained_variance_: (dim_,) float64 eigenvalues of the (N - 1)-normalised covariance.
        dim_: int, number of kept components.
        n_features_in_: int, F.
    """

    def __init__(self, dim: int | None = 256, whiten: bool = True, l2: bool = True, eps: float = 1e-5, *,
                 allreduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.dim = dim
        self.whiten = bool(whiten)
        self.l2 = bool(l2)
        self.eps = float(eps)
        self.allreduce = allreduce

    # --------------------------------------------------------------------- fitting

    def _sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes (itself in one process)."""
        return summed(tensor, self.allreduce)

    @torch.no_grad()
    def fit(self, X: torch.Tensor | np.ndarray, device: torch.device | None = None) -> "Whitener":
        """Fit mean and principal axes on X (N, F), N >= 2 (over all processes with ``allreduce``). Returns self.

        ``device``: where the sums are accumulated (default X's): a GPU for features memory-mapped on the host.
        """
        X = _as_2d_float_tensor(X, "Whitener.fit")
        n_local, f = X.shape
        n = n_local if self.allreduce is None else int(self._sum(torch.tensor([float(n_local)])).item())
        if n < 2:
            raise ValueError(f"Whitener.fit needs at least 2 rows to estimate a covariance, got N={n}")
        device, step = X.device if device is None else torch.device(device), _chunk_rows(f)

        # Pass 1: mean (float64) and the finiteness check, chunk by chunk.
        total = torch.zeros(f, dtype=torch.float64, device=device)
        bad_rows, first_bad = 0, []
        for start in range(0, n_local, step):
            chunk = X[start:start + step].to(device, torch.float64)          # (c, F)
            bad = ~torch.isfinite(chunk).all(dim=1)
            n_bad = int(bad.sum())
            if n_bad:
                bad_rows += n_bad
                if len(first_bad) < 5:
                    first_bad += (torch.nonzero(bad)[:5 - len(first_bad), 0] + start).tolist()
                continue
            total += chunk.sum(dim=0)
        if self.allreduce is not None:   # every process must stop if one has a bad row, or the others would hang
            bad_rows = int(self._sum(torch.tensor([float(bad_rows)], device=device)).item())
        _raise_if_not_finite(bad_rows, first_bad, n, "Whitener.fit")
        mean = self._sum(total) / n                                           # (F,)

        # Pass 2: centred scatter matrix. Two passes (rather than E[xx^T] - mean mean^T) avoid the
        # cancellation that one pass suffers when the mean is large relative to the spread.
        scatter = torch.zeros(f, f, dtype=torch.float64, device=device)
        for start in range(0, n_local, step):
            centred = X[start:start + step].to(device, torch.float64) - mean  # (c, F)
            scatter.addmm_(centred.T, centred)                                # (F, F)
        covariance = self._sum(scatter) / (n - 1)

        eigvals, eigvecs = torch.linalg.eigh(covariance)                     # ascending
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)                  # largest first

        keep = f if (self.dim is None or self.dim <= 0) else min(int(self.dim), f, n - 1)
        components = eigvecs[:, :keep]                                        # (F, dim_)
        # Deterministic signs: the largest-|.| entry of each component is made positive.
        pivot = components.abs().argmax(dim=0)                                # (dim_,)
        signs = torch.sign(components[pivot, torch.arange(keep, device=device)])
        signs[signs == 0] = 1.0
        components = components * signs

        self.mean_ = mean
        self.components_ = components
        # Round-off can leave tiny negative eigenvalues in a rank-deficient covariance.
        self.explained_variance_ = eigvals[:keep].clamp_min(0.0)
        self.dim_ = int(keep)
        self.n_features_in_ = int(f)
        return self

    # --------------------------------------------------------------------- transforming

    def folded_projection(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (mean (F,), projection (F, dim_)) on ``device``, whitening folded into the projection."""
        projection = self.components_
        if self.whiten:
            projection = projection * (self.explained_variance_ + self.eps).rsqrt()
        return (self.mean_.to(device=device, dtype=torch.float32),
                projection.to(device=device, dtype=torch.float32))

    @torch.no_grad()
    def transform(self, X: torch.Tensor | np.ndarray, device: torch.device | None = None) -> torch.Tensor:
        """Project X (N, F) to (N, dim_) float32 on ``device`` (default X's; see the class docstring for the
        formula)."""
        if not hasattr(self, "components_"):
            raise ValueError("Whitener.transform called before fit; call fit(X) or fit_transform(X) first")
        X = _as_2d_float_tensor(X, "Whitener.transform")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"Whitener.transform: X has {X.shape[1]} features but the whitener was fitted on "
                             f"{self.n_features_in_}")
        _check_finite_chunked(X, "Whitener.transform")
        device = X.device if device is None else torch.device(device)
        mean, projection = self.folded_projection(device)
        out = torch.empty(X.shape[0], self.dim_, dtype=torch.float32, device=device)
        step = _chunk_rows(X.shape[1])
        for start in range(0, X.shape[0], step):
            # Centring a chunk at a time keeps the float32 temporary at chunk size, not (N, F).
            out[start:start + step] = (X[start:start + step].to(device, torch.float32) - mean) @ projection
        if self.l2:
            # normalize clamps the norm at 1e-12, so an all-zero row stays zero instead of becoming NaN.
            out = torch.nn.functional.normalize(out, p=2, dim=1, eps=1e-12)
        return out

    def fit_transform(self, X: torch.Tensor | np.ndarray, device: torch.device | None = None) -> torch.Tensor:
        """``fit(X)`` then ``transform(X)``: (N, F) -> (N, dim_) float32 (on ``device``, default X's)."""
        return self.fit(X, device).transform(X, device)

    def __repr__(self) -> str:
        fitted = f", dim_={self.dim_}" if hasattr(self, "dim_") else ""
        return f"Whitener(dim={self.dim}, whiten={self.whiten}, l2={self.l2}, eps={self.eps}{fitted})"


def summed(t: torch.Tensor, allreduce: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """``t`` summed over the processes that each hold some rows (``allreduce``), or ``t`` itself in one process."""
    return t if allreduce is None else allreduce(t)


def principal_axes(points: torch.Tensor, share: float,
                   allreduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (d,), variances (d',), axes (d, d')) float64 of points (M, d): the principal directions whose variance
    exceeds ``share`` of the largest (at least the largest), largest first. ``allreduce`` sums the moments over the
    processes that each hold some rows."""
    x = points.double()
    n = summed(torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device), allreduce)
    mean = summed(x.sum(0), allreduce) / n
    centred = x - mean
    cov = summed(centred.T @ centred, allreduce) / (n - 1)                                  # two passes, as Whitener
    eigvals, eigvecs = torch.linalg.eigh(cov)                                   # ascending
    keep = eigvals > share * float(eigvals.max().clamp_min(1e-300))
    keep[-1] = True
    return mean, eigvals[keep].flip(0), eigvecs[:, keep].flip(1)


__all__ = ["Whitener", "principal_axes", "summed"]
