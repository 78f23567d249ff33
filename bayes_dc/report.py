"""Summaries of run directories (metrics.jsonl) for benchmark tables, sweeps and notebooks.

Reads files only; imports no training code, so it is safe to use on run directories copied elsewhere.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .jsonl import read_jsonl


def read_records(run_dir: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (one per epoch, plus the final one); ``[]`` if there are none."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def summarize_run(run_dir: str | Path, stability_window: int = 5) -> dict | None:
    """Headline numbers of one run, or None if it has not finished an epoch.

    Keys: epochs_done, finished, nmi/acc/ari/purity/k_active/k_used/k_eff of the last clustering (the final
    evaluation when the run finished), nmi0/acc0/knn0 of round 0 (the random-init trunk), nmi_prev (mean
    NMI(t, t-1) over the last ``stability_window`` rounds), knn (last kNN accuracy), epoch_s (median seconds
    per epoch), cluster_share (median share of an epoch spent clustering, over relabel epochs),
    relabels (number of clusterings during training), nmi_curve / k_curve (per round).
    """
    recs = read_records(run_dir)
    rounds = [r for r in recs if "round" in r]
    train = [r for r in recs if r.get("phase") == "train"]
    if not rounds or not train:
        return None
    knn = [(r["epoch"], r["knn"]) for r in recs if r.get("knn") is not None]
    stab = [r["nmi_prev"] for r in rounds if r.get("nmi_prev") is not None]
    relabel_epochs = [r for r in train if "cluster_seconds" in r]
    last = rounds[-1]
    out = {
        "epochs_done": len(train),
        "finished": any(r.get("phase") == "final" for r in recs),
        "relabels": len(relabel_epochs),
        "nmi_curve": [r.get("nmi") for r in rounds],
        "k_curve": [r.get("k_active") for r in rounds],
        "nmi0": rounds[0].get("nmi"), "acc0": rounds[0].get("acc"),
        "knn0": knn[0][1] if knn and knn[0][0] == 0 else None,
        "nmi_prev": float(np.mean(stab[-stability_window:])) if stab else None,
        "knn": knn[-1][1] if knn else None,
        "epoch_s": float(np.median([r["epoch_seconds"] for r in train])),
        "cluster_s": float(np.median([r["cluster_seconds"] for r in relabel_epochs])) if relabel_epochs else None,
        "cluster_share": float(sum(r["cluster_seconds"] for r in relabel_epochs) /
                               sum(r["epoch_seconds"] for r in train)),
    }
    for key in ("nmi", "acc", "ari", "purity", "k_active", "k_used", "k_eff"):
        out[key] = last.get(key)
    return out


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[tuple[str, str, int]]) -> str:
    """rows: dicts; columns: (key, header, digits). Missing values print as '–'."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k), d) for k, _, d in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def mean_spread(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals)) if len(vals) > 1 else None
