"""Figures from a run directory alone (``metrics.jsonl``); no training code is imported.

``plot_run(run_dir)`` writes ``figures/rounds.{png,pdf}``: NMI vs classes and NMI(t, t-1) per round,
active / used clusters per round, kNN accuracy, and the clustering share of each epoch. The style is
readable in black and white (markers and line styles, not only colours).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bayes_dc.evaluation.report import read_records  # noqa: E402

STYLE = {"font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "legend.frameon": False, "savefig.dpi": 150}


def rounds(records: list[dict]) -> list[dict]:
    """The records that carry a clustering (relabel epochs and the final evaluation)."""
    return [r for r in records if "round" in r]


def save(fig, out_base: Path) -> list[Path]:
    out_base.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_base.with_suffix(".png"), out_base.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, bbox_inches="tight")
    plt.close(fig)
    return paths


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the per-round figure of one run; returns the written paths."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{run_dir / 'metrics.jsonl'} not found: is {run_dir} a bayes_dc run directory?")
    records = read_records(run_dir)
    rs = rounds(records)
    if not rs:
        return []
    title = run_dir.name
    x = [r["epoch"] for r in rs]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, 2, figsize=(9, 6), constrained_layout=True)
        ax = axes[0, 0]
        if any("nmi" in r for r in rs):
            ax.plot(x, [r.get("nmi") for r in rs], "o-", color="k", label="NMI vs classes")
        if any("nmi_prev" in r for r in rs):
            ax.plot(x, [r.get("nmi_prev") for r in rs], "s--", color="0.5", label="NMI(t, t-1)")
        ax.set(xlabel="epoch", ylabel="NMI", title="Clustering quality and stability", ylim=(0, 1))
        ax.legend()

        ax = axes[0, 1]
        ax.plot(x, [r["k_active"] for r in rs], "o-", color="k", label="K_active (weight ≥ min(0.5 %, 1/2T))")
        ax.plot(x, [r["k_used"] for r in rs], "^:", color="0.4", label="K_used (argmax labels)")
        ax.plot(x, [r["k_eff"] for r in rs], "s--", color="0.6", label="K_eff (exp entropy)")
        ax.set(xlabel="epoch", ylabel="clusters", title="Clusters per round")
        ax.legend()

        ax = axes[1, 0]
        knn = [(r["epoch"], r["knn"]) for r in records if r.get("knn") is not None]
        if knn:
            ax.plot(*zip(*knn), "o-", color="k")
        ax.set(xlabel="epoch", ylabel="accuracy", title="kNN test accuracy (k=20, cosine)")

        ax = axes[1, 1]
        train = [r for r in records if r.get("phase") == "train" and "epoch_seconds" in r]
        if train:
            ex = [r["epoch"] for r in train]
            total = [r["epoch_seconds"] for r in train]
            clus = [r.get("cluster_seconds", 0.0) for r in train]
            ax.bar(ex, total, color="0.8", edgecolor="k", label="epoch total")
            ax.bar(ex, clus, color="0.3", edgecolor="k", hatch="//", label="clustering")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
        ax.set(xlabel="epoch", ylabel="seconds", title="Time per epoch")
        fig.suptitle(title)
        return save(fig, run_dir / "figures" / "rounds")
