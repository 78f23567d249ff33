"""Every rule an option obeys, declared once (as scikit-learn's ``_parameter_constraints``), checked before a run writes
anything (:func:`check_config`, called by the command line and by ``pipeline.validate``):

- :data:`RANGES`: the interval of every numeric option (constructors check their arguments with :func:`check_option`
  against the same table, so a library call and the command line accept the same values);
- choices: the ``Literal`` of every enumerated option in :mod:`.schema` (:func:`check_choices`, for configs read from
  JSON, which the parser never sees);
- :data:`CROSS_RULES`: rules between options (``head='keep'`` needs a backend with identities, ...), each named by the
  option its message blames. Rules that need the data (sizes against N) are ``pipeline.check_sizes``'s.

The library names parameters (`` `pca_dim` ``, ``pca_dim=32``) in an :class:`OptionError`; the command line shows the same
message with flags (:func:`command_line_message`: ``--pca-dim``, ``--pca-dim 32``).

Without it ``--lr nan`` (or inf, or 0) created a run directory and diverged at step 1, and ``--crop-scale 0 1``
failed only after the run directory was written. Ranges are intervals in the usual notation: ``(0, inf)`` is
``> 0``, ``[0, 1)`` is ``>= 0 and < 1``; a float must also be finite, an option that accepts None may be None,
and each element of a tuple option (``--alpha-prior``, ``--crop-scale``) must lie in the range.
``tests/test_cli.py`` checks that every numeric option of :class:`~bayes_dc.config.schema.Config` has an entry here.
"""
from __future__ import annotations

import math
import re
import typing
from typing import Any, Callable

from bayes_dc.config.schema import OPTIONS, Config, backends_where

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
    "pumap_warm_epochs": "[0, inf)",  # 0: a warm round reuses the encoder as it is
    # clustering
    "k": "[2, inf)", "truncation": "[2, inf)", "kmeans_niter": "[1, inf)", "alpha": "(0, inf)",
    "alpha_prior": "(0, inf)", "prior_scale": "(0, inf)", "prior_dof": "(2, inf)", "kappa0": "(0, inf)",
    "factors": "[1, inf)",
    "topk": "[1, inf)", "max_iter": "[1, inf)", "tol": "(0, 1)", "min_size": "[0, inf)", "move_every": "[1, inf)",
    "prior_decay": "(0, 1]", "svi_steps": "[1, inf)", "svi_batch": "[1, inf)", "svi_lr": "(0, inf)",
    "group_cut": "(0, 1)",
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


def check_option(option: str, value: Any) -> None:
    """OptionError naming ``option`` when ``value`` (a number, a tuple of numbers, or None where allowed) lies outside
    its range in :data:`RANGES`, e.g. `` `lr` must be > 0 (a finite number), got nan``."""
    text = RANGES[option]
    if value is None:
        return
    values = value if isinstance(value, (tuple, list)) else (value,)
    if all(in_range(v, text) for v in values):
        return
    kind = "an integer" if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else "a finite number"
    each = "each value " if isinstance(value, (tuple, list)) else ""
    shown = " ".join(str(v) for v in values)
    raise OptionError(option, f"`{option}` must be {each}{describe(text)} ({kind}), got {shown}")


def check_ranges(cfg: Config) -> None:
    """OptionError naming the first numeric option of ``cfg`` outside its range (:data:`RANGES`)."""
    for name in RANGES:
        section, _ = OPTIONS[name]
        check_option(name, getattr(getattr(cfg, section), name))


def _choices(tp: Any) -> tuple | None:
    """The values of a ``Literal`` (or ``Literal | None``) type, else None."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    return next((c for c in (_choices(a) for a in typing.get_args(tp)) if c), None)


def check_choices(cfg: Config) -> None:
    """OptionError naming the first enumerated option of ``cfg`` whose value is not one of its ``Literal``'s."""
    hints: dict[type, dict] = {}
    for name, (section, _) in OPTIONS.items():
        part = getattr(cfg, section)
        tp = hints.setdefault(type(part), typing.get_type_hints(type(part)))[name]
        allowed = _choices(tp)
        value = getattr(part, name)
        if allowed is not None and value is not None and value not in allowed:
            raise OptionError(name, f"unknown `{name}` {value!r}; choose one of {list(allowed)}")


# ---- rules between options: (the option the message blames, check(cfg) -> message or None) ------------------------
def _head_keeps_identities(cfg: Config) -> str | None:
    c, traits = cfg.cluster, cfg.cluster.traits
    if cfg.targets.head == "keep" and not traits.identities:
        return (f"head='keep' needs component identities that persist across rounds; {traits.summary}, so use "
                f"head='reset' with prior={c.prior!r} (or prior={' / '.join(backends_where('identities'))})")
    return None


def _soft_targets_need_responsibilities(cfg: Config) -> str | None:
    c, t = cfg.cluster, cfg.targets
    if t.targets != "hard" and not c.traits.soft:
        return (f"targets={t.targets!r} needs responsibilities; {c.traits.summary}. Use targets='hard' with "
                f"prior={c.prior!r}, or prior={' / '.join(backends_where('soft'))}")
    return None


def _two_views_assign_new_points(cfg: Config) -> str | None:
    if cfg.train.two_views and not cfg.cluster.traits.assigns_new_points:
        return ("two_views=True assigns augmented views to the round's clusters on the fly, which needs a backend "
                f"that assigns new points: use prior={' / '.join(backends_where('assigns_new_points'))}")
    return None


def _space_weight_needs_two_views_on_pumap(cfg: Config) -> str | None:
    if cfg.train.space_weight > 0 and not (cfg.train.two_views and cfg.reduce == "pumap"):
        return ("`space_weight` trains the trunk with the parametric space's loss on two views of each image; it "
                "needs two_views=True and reduce='pumap' (or set space_weight=0)")
    return None


def _coarse_head_needs_groups_of_one_view(cfg: Config) -> str | None:
    if cfg.targets.coarse_head and (cfg.cluster.group == "none" or cfg.train.two_views):
        return ("coarse_head=True trains a second head on the groups of components of one view: it needs "
                "group='overlap' or group='entropy', and two_views=False")
    return None


CROSS_RULES: list[tuple[str, Callable[[Config], str | None]]] = [
    ("head", _head_keeps_identities),
    ("targets", _soft_targets_need_responsibilities),
    ("two_views", _two_views_assign_new_points),
    ("space_weight", _space_weight_needs_two_views_on_pumap),
    ("coarse_head", _coarse_head_needs_groups_of_one_view),
]


def check_config(cfg: Config) -> None:
    """Every rule that needs no data: ranges, choices, then the rules between options; OptionError naming the option."""
    check_ranges(cfg)
    check_choices(cfg)
    for option, rule in CROSS_RULES:
        message = rule(cfg)
        if message is not None:
            raise OptionError(option, message)


_MENTION = re.compile(r"`([a-z][a-z0-9_]*)`|\b([a-z][a-z0-9_]*)=('[^']*'|[^\s,;)]+)")


def command_line_message(err: OptionError | str) -> str:
    """A library message with parameters in their command-line spelling: `` `pca_dim` `` -> ``--pca-dim``,
    ``pca_dim=32`` -> ``--pca-dim 32``, ``reduce='umap'`` -> ``--reduce umap``, ``two_views=True`` -> ``--two-views``
    (``False``: ``--no-two-views``). Words that are not options are left alone."""
    def spell(match: re.Match) -> str:
        name = match[1] or match[2]
        if name not in OPTIONS:
            return match[0]
        if match[1]:
            return flag(name)
        value = match[3].strip("'")
        if value in ("True", "False"):
            return flag(name) if value == "True" else "--no-" + flag(name)[2:]
        return f"{flag(name)} {value}"
    return _MENTION.sub(spell, str(err))
__all__ = ["CROSS_RULES", "OptionError", "RANGES", "check_choices", "check_config", "check_option", "check_ranges",
           "command_line_message", "describe", "flag", "in_range", "parse_interval"]
