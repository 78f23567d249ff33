"""Use what a run learned: ``load_run(run_dir)`` -> the trunk, its features, and the final clustering.

A finished run (``experiments/run.py``) leaves ``final.pt`` in its directory (written with the final clustering,
verified by a sha256 manifest, read with ``weights_only=True``): the model, the final clustering space's state
(``Reducer.transform`` maps new points into it), the backend's predictor (DP: the posterior; k-means: the
centroids), the final labels, and the input the model expects (channels, image size, normalisation). From it::

    run = load_run("runs/my-run")
    feats = run.features(images)            # (B, C, S, S) uint8 -> (B, F) trunk features
    labels, values, index = run.assign(images)       # final clusters, top-k responsibilities
    scores = run.novelty(images)            # DP: P(new component | image); k-means: distance to the centroid
    run.posterior                           # DP: weights, means, covariances; k-means: centroids

Images are uint8 (B, C, S, S) at the run's ``image_size`` and ``channels``; :meth:`TrainedRun.transform` makes one
from a decoded image of any size (the evaluation view: centred square, resized). Any ``--reduce`` whose reducer
maps new points works (``pca``, ``none``, a parametric space; ``umap`` through its nearest-neighbour interpolation,
:meth:`bayes_dc.spaces.umap.UMAPReducer.transform`), without special cases here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bayes_dc.clustering import ClusterBackend, make_backend
from bayes_dc.config.schema import Config
from bayes_dc.data.transforms import centre_crop_resize
from bayes_dc.models.features import normalize
from bayes_dc.rundir.jsonl import read_jsonl
from bayes_dc.models.build import build_run_model, clustered_features
from bayes_dc.rundir.final import FINAL_CHECKPOINT, FINAL_FORMAT
from bayes_dc.runtime.distributed import resolve_device
from bayes_dc.spaces.base import Reducer
from bayes_dc.spaces.registry import make_reducer
from bayes_dc.rundir.checkpoints import CheckpointError, load_verified

# What TrainedRun reads from final.pt (checked first, so a file missing one is a one-line error, not a KeyError).
_FINAL_KEYS = ("config", "model", "reduce_state", "predictor", "labels", "weights", "input")
_INPUT_KEYS = ("channels", "image_size", "mean", "std")


class RunLoadError(ValueError):
    """The run directory cannot be used (no final checkpoint, another format, a config this version cannot read);
    the message is one line naming the problem and the fix."""


@dataclass
class Novelty:
    """Novelty of B images. ``score`` (B,) float64; ``kind``: ``"probability"`` (DP: P(the image starts a new
    component), flagged above ``threshold``) or ``"distance"`` (k-means: Euclidean distance to the nearest
    centroid in the clustering space; not a probability, ``flag`` is None). ``warning``: why the scores may mean
    little in this run's space (a reducer with ``maps_novel_points_apart = False``, e.g. a UMAP layout)."""

    score: np.ndarray
    flag: np.ndarray | None
    kind: str
    threshold: float | None
    warning: str | None = None


class TrainedRun:
    """A finished run, loaded (see the module docstring). Attributes: ``config``, ``trunk`` (eval mode),
    ``model`` (trunk, projection, head), ``device``, ``channels``, ``image_size``, ``mean``/``std`` (C,),
    ``labels`` (N,) the final labels of the training images, ``backend``, ``reducer``, ``component_group`` (T,) the
    group (cluster shown to a user) of each component when the run grouped them (``--group``), else None."""

    def __init__(self, checkpoint: dict, config: Config, device: torch.device):
        self.config, self.device = config, device
        meta = checkpoint["input"]
        self.channels, self.image_size = int(meta["channels"]), int(meta["image_size"])
        self.mean, self.std = meta["mean"].float(), meta["std"].float()
        self.model = build_run_model(config, self.channels)
        self.model.load_state_dict(checkpoint["model"])
        self.model.to(device).eval()
        self.trunk = self.model.trunk
        self.labels = np.asarray(checkpoint["labels"])
        self.weights = np.asarray(checkpoint["weights"])
        group = checkpoint.get("component_group")   # runs saved before grouping existed have none
        self.component_group = None if group is None else np.asarray(group)
        self.backend: ClusterBackend = make_backend(config.cluster, device)
        self.reducer: Reducer = make_reducer(config, device=device)
        self.reduce_state, self.predictor = checkpoint["reduce_state"], checkpoint["predictor"]
        if self.predictor is None:
            raise RunLoadError(f"the final clustering of this run kept no predictor ({config.cluster.prior}); it "
                               f"cannot assign new images")

    # ---- images -> features -> clustering space ---------------------------------------------------------
    def transform(self, image: torch.Tensor) -> torch.Tensor:
        """The evaluation view of one decoded image (C, H, W) uint8 of any size: its centred square resized to
        (C, image_size, image_size) (what the run's features were computed on)."""
        return centre_crop_resize(image, self.image_size)

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be a uint8 (B, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if images.shape[1] != self.channels:
            raise ValueError(f"images have {images.shape[1]} channel(s) but the run was trained on {self.channels}; "
                             f"convert them ({'grey' if self.channels == 1 else 'RGB'}) first")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"images are {tuple(images.shape[-2:])} px but the run expects {self.image_size} x "
                             f"{self.image_size}; pass each through run.transform(image)")
        return images

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Trunk features (B, F) float32 on the run's device of uint8 images (B, C, S, S), eval mode."""
        images = self._check(images)
        return torch.cat([self.trunk(normalize(images[s:s + batch_size].to(self.device), self.mean, self.std))
                          for s in range(0, images.shape[0], batch_size)])

    @torch.no_grad()
    def points(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The images in the final clustering space (B, d): trunk features, the projection head when the run
        clustered on it (``--cluster-on projection``), then the reducer's ``transform``."""
        feats = clustered_features(self.model, self.config, self.features(images, batch_size), self.device)
        return self.reducer.transform(feats, self.reduce_state)

    # ---- the final clustering -----------------------------------------------------------------------------
    def assign(self, images: torch.Tensor, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels (B,) int64, top-k responsibilities (B, k) float32, their component ids (B, k) int64) of the
        images under the final clustering (DP: the E-step of the final posterior; k-means: the nearest centroid,
        k = 1)."""
        return self.assign_points(self.points(images, batch_size))

    def assign_points(self, points: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`assign` for points already in the clustering space (B, d)."""
        values, index = self.backend.responsibilities(self.predictor, points)
        index = index.cpu().numpy().astype(np.int64)
        return index[:, 0].copy(), values.cpu().numpy().astype(np.float32), index

    def groups(self, labels: np.ndarray) -> np.ndarray:
        """The group (the cluster a user is shown) (B,) int64 of component labels (B,) from :meth:`assign`; the labels
        themselves when the run did not group its components."""
        return np.asarray(labels) if self.component_group is None else self.component_group[labels]

    def novelty(self, images: torch.Tensor, batch_size: int = 1024) -> Novelty:
        """How little the final clustering explains each image (:class:`Novelty`)."""
        return self.novelty_points(self.points(images, batch_size))

    def novelty_points(self, points: torch.Tensor) -> Novelty:
        """:meth:`novelty` for points already in the clustering space (B, d)."""
        score = self.backend.novelty(self.predictor, points).cpu().numpy()
        threshold = self.backend.novelty_threshold
        warning = None
        if not self.reducer.maps_novel_points_apart:
            warning = (f"this run clusters in a --reduce {self.reducer.name} space, which places new images among or "
                       f"between the training images' embeddings, never away from them: novelty misses many images "
                       f"unlike the training images there (BENCHMARKS.md section 9)")
        return Novelty(score, None if threshold is None else score > threshold, self.backend.novelty_kind, threshold,
                       warning)

    @property
    def posterior(self) -> dict:
        """The final clustering's parameters, in the clustering space (numpy, float64).

        DP: ``ids`` (K,) of the live components, ``weights`` (K,) E[pi_k], ``new_weight`` (the stick mass left for
        a new component), ``means`` (K, d), ``covariances`` E[Sigma_k] ((K, d, d) full, (K, d) diag, (K,)
        spherical) and ``covariance`` (the family). k-means: ``centroids`` (k, d) and ``weights`` (k,) (cluster
        fractions of the training images)."""
        pred = self.predictor
        if "centroids" in pred:
            return {"centroids": pred["centroids"].double().numpy(), "weights": self.weights}
        rows, family = pred["predictive"]["components"], pred["covariance"]
        d = rows["m"].shape[1]
        if family == "full":   # E[Sigma] = Psi / (nu - d - 1)
            psi = rows["scale"] @ rows["scale"].transpose(-1, -2)
            cov = psi / (rows["dof"] - d - 1.0)[:, None, None]
        else:                  # E[1 / lambda] = b / (a - 1)
            cov = rows["scale"] / (rows["dof"] - 1.0)
        return {"covariance": family, "ids": pred["live"].numpy(),
                "weights": pred["predictive"]["log_weights"].exp().numpy(),
                "new_weight": float(np.exp(pred["predictive"]["log_new_weight"])),
                "means": (rows["m"] + pred["shift"].double()).numpy(), "covariances": cov.numpy()}


def trunk_architecture(config: Config, channels: int) -> dict:
    """What :func:`bayes_dc.trained.trunk_loader.build_trunk` needs to rebuild a run's trunk (trunk.json's
    ``architecture``)."""
    m = config.model
    return {"arch": m.arch, "in_channels": int(channels), "sobel": bool(m.sobel), "width": int(config.width)}


def trunk_state(model_state: dict) -> dict:
    """The trunk's entries of a model state dict, without the ``trunk.`` prefix."""
    return {k[len("trunk."):]: v for k, v in model_state.items() if k.startswith("trunk.")}


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedRun:
    """The finished run in ``run_dir`` (its ``final.pt``, verified), on ``device`` ("auto": CUDA if present).

    Raises:
        RunLoadError: no final checkpoint (the run has not finished), another checkpoint format, or a config this
            version of bayes_dc cannot read; one line each.
        CheckpointError: final.pt is damaged, truncated or unverifiable (one line naming it; never replaced by the
            training checkpoints last.pt / prev.pt, which hold no final clustering).
    """
    run_dir = Path(run_dir)
    path = run_dir / FINAL_CHECKPOINT
    if not path.exists():
        if not (run_dir / "config.json").exists():
            raise RunLoadError(f"{run_dir} is not a run directory (no config.json); pass the folder of a finished run")
        if any(r.get("phase") == "final" for r in read_jsonl(run_dir / "metrics.jsonl")):
            raise RunLoadError(f"{path} not found: the run finished before runs saved their final clustering; train it "
                               f"again with this version of bayes_dc")
        raise RunLoadError(f"{path} not found: the run has not finished (the final clustering writes final.pt); "
                           f"finish it with experiments/run.py --config {run_dir / 'config.json'} --resume")
    try:
        checkpoint = load_verified(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}. Nothing was loaded; restore a good copy of {path.name}, or train the run "
                              f"again") from None
    if not isinstance(checkpoint, dict):
        raise RunLoadError(f"{path} holds a {type(checkpoint).__name__}, not a bayes_dc final checkpoint")
    found = checkpoint.get("format")
    if found != FINAL_FORMAT:
        raise RunLoadError(f"{path} has format {found!r}, this version of bayes_dc reads {FINAL_FORMAT!r}: load it with "
                           f"the bayes_dc version that wrote it ({checkpoint.get('bayes_dc_version', 'unknown')})")
    meta = checkpoint.get("input")
    missing = [k for k in _FINAL_KEYS if k not in checkpoint] + \
        ([f"input.{k}" for k in _INPUT_KEYS if k not in meta] if isinstance(meta, dict) else [])
    if missing:
        raise RunLoadError(f"{path} lacks {', '.join(missing)}: it is damaged or was not written by bayes_dc's "
                           f"run.py; restore a good copy, or train the run again")
    try:
        config = Config.from_dict(checkpoint["config"])
    except (ValueError, TypeError) as err:
        raise RunLoadError(f"{path}: its config cannot be read by this version of bayes_dc ({err}); load it with the "
                           f"version that wrote it ({checkpoint.get('bayes_dc_version', 'unknown')})") from None
    return TrainedRun(checkpoint, config, resolve_device(str(device)))


__all__ = ["Novelty", "RunLoadError", "TrainedRun", "load_run", "trunk_architecture", "trunk_state"]
