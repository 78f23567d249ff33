"""The allowed range of every numeric option, checked before a run writes anything (``pipeline.validate``).

Without it ``--lr nan`` (or inf, or 0) created a run directory and diverged at step 1, and ``--crop-scale 0 1``
failed only after the run directory was written. Ranges are intervals in the usual notation: ``(0, inf)`` is
``> 0``, ``[0, 1)`` is ``>= 0 and < 1``; a float must also be finite, an option that accepts None may be None,
and each element of a tuple option (``--alpha-prior``, ``--crop-scale``) must lie in the range.
``tests/test_cli.py`` checks that every numeric option of :class:`~bayes_dc.config.schema.Config` has an entry here.
"""
from __future__ import annotations

import math
from typing import Any

from bayes_dc.config.schema import OPTIONS, Config

INF = math.inf


class OptionError(ValueError):
    """A bad value for an option. The library names the parameter (``option``, e.g. ``"pca_dim"``) in its message;
    the command line shows the same message with the flag (:func:`flag`: ``--pca-dim``) in its place."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def flag(option: str) -> str:
    """``"pca_dim"`` -> ``"--pca-dim"``: the command-line spelling of a parameter."""
    return "--" + option.replace("_", "-")

RANGES: dict[str, str] = {
    # data
    "subset": "[1, inf)", "eval_subset": "[1, inf)", "image_size": "[1, inf)", "memory_budget_gb": "(0, inf)",
    "num_workers": "[0, inf)",
    # model
    "width": "[1, inf)", "projection_dim": "[1, inf)", "projection_hidden": "[1, inf)",
    # features
    "pca_dim": "[1, inf)", "extract_batch": "[1, inf)", "reduce_dim": "[1, inf)", "umap_neighbors": "[2, inf)",
    "umap_min_dist": "[0, inf)", "pumap_hidden": "[1, inf)", "pumap_epochs": "[1, inf)",
    "pumap_warm_epochs": "[1, inf)",
    # clustering
    "k": "[2, inf)", "truncation": "[2, inf)", "kmeans_niter": "[1, inf)", "alpha": "(0, inf)",
    "alpha_prior": "(0, inf)", "prior_scale": "(0, inf)", "prior_dof": "(2, inf)", "kappa0": "(0, inf)",
    "factors": "[1, inf)",
    "topk": "[1, inf)", "max_iter": "[1, inf)", "tol": "(0, 1)", "min_size": "[0, inf)", "move_every": "[1, inf)",
    "prior_decay": "(0, 1]", "svi_steps": "[1, inf)", "svi_batch": "[1, inf)", "svi_lr": "(0, inf)",
    # targets
    "sharpen": "(0, inf)",
    # training
    "epochs": "[1, inf)", "relabel_every": "[1, inf)", "relabel_agreement": "(0, 1]", "relabel_max_gap": "[1, inf)",
    "batch_size": "[2, inf)", "lr": "(0, inf)", "momentum": "[0, 1)", "weight_decay": "[0, inf)",
    "head_lr": "(0, inf)", "crop_padding": "[0, inf)", "crop_scale": "(0, 1]", "space_weight": "[0, inf)",
    "epoch_samples": "[1, inf)",
    # run
    "seed": "[0, inf)", "threads": "[1, inf)", "knn_every": "[0, inf)", "knn_k": "[1, inf)",
}


def parse_interval(text: str) -> tuple[float, float, bool, bool]:
    """``"[0, 1)"`` -> (low, high, low included, high included)."""
    low, high = (float(part) for part in text[1:-1].split(","))
    return low, high, text[0] == "[", text[-1] == "]"


def describe(text: str) -> str:
    """``"[0, 1)"`` -> ``">= 0 and < 1"``; ``"(0, inf)"`` -> ``"> 0"``."""
    low, high, low_in, high_in = parse_interval(text)
    parts = [f"{'>=' if low_in else '>'} {low:g}"] + ([f"{'<=' if high_in else '<'} {high:g}"] if high < INF else [])
    return " and ".join(parts)


def in_range(value: float, text: str) -> bool:
    low, high, low_in, high_in = parse_interval(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (value >= low if low_in else value > low) and (value <= high if high_in else value < high)


def check_ranges(cfg: Config) -> None:
    """ValueError naming the first numeric option of ``cfg`` outside its range (:data:`RANGES`), e.g.
    ``--lr must be > 0 (a finite number), got nan``."""
    for name, text in RANGES.items():
        section, _ = OPTIONS[name]
        value: Any = getattr(getattr(cfg, section), name)
        if value is None:
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        if not all(in_range(v, text) for v in values):
            flag = "--" + name.replace("_", "-")
            kind = "an integer" if all(isinstance(v, int) and not isinstance(v, bool) for v in values) \
                else "a finite number"
            each = "each value " if isinstance(value, (tuple, list)) else ""
            shown = " ".join(str(v) for v in values)
            raise ValueError(f"{flag} must be {each}{describe(text)} ({kind}), got {shown}")


__all__ = ["OptionError", "flag", "RANGES", "check_ranges", "describe", "in_range", "parse_interval"]
