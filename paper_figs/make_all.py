#!/usr/bin/env python
"""Regenerate every paper figure from run directories alone: no training, no training code imported.

    python paper_figs/make_all.py RUNS_DIR OUT_DIR

RUNS_DIR is searched recursively for run directories (a ``metrics.jsonl`` next to a ``config.json``, as
written by ``experiments/run.py`` / ``experiments/sweep.py``). Runs whose configs differ only in the seed
form one group (curves show the mean over seeds, a band the min-max). Runs of different datasets / subsets /
schedules are never mixed: each such setting gets its own figures (a ``_<setting>`` suffix when there are
several). A figure whose runs are missing is skipped with a note. See paper_figs/README.md for the list.

Reads run directories with json / numpy and ``bayes_dc.evaluation.report``; only the image grids (fig 8) load the
dataset (``bayes_dc.data``) to show the pixels.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from bayes_dc.clustering.base import active_threshold
from bayes_dc.rundir.jsonl import read_jsonl  # noqa: E402
from bayes_dc.evaluation.report import NOT_COMPARED, read_records  # noqa: E402
import style as S  # noqa: E402

# Fields that define the "setting" (runs of different settings are never put on one axis).
SETTING = [("data", "dataset"), ("data", "subset"), ("train", "epochs"), ("model", "arch"), ("model", "width")]
# Fields shown in legend labels when they differ between the plotted groups, in this order.
LABEL_FIELDS = [("cluster", "truncation", "T={}"), ("cluster", "alpha", "α={:g}"),
                ("cluster", "warm_start", "warm={}"), ("cluster", "prior_decay", "ρ={:g}"),
                ("targets", "targets", "{}"), ("targets", "sharpen", "τ={:g}"),
                ("train", "relabel", "relabel={}"), ("train", "relabel_every", "relabel every {} ep"),
                ("targets", "head", "head={}"), ("cluster", "inference", "{}"), ("features", "pca_dim", "PCA {}"),
                ("features", "whiten", "whiten={}"), ("features", "reduce", "{}"), ("features", "cluster_on", "on {}"),
                ("train", "augment", "{}"), ("train", "two_views", "two views"),
                ("train", "space_weight", "space loss {:g}")]
MAX_SERIES = 8


# ---- reading run directories -----------------------------------------------------------------------------
@dataclass
class Run:
    path: Path
    config: dict
    records: list[dict]
    lineage: list[dict]

    @property
    def rounds(self) -> list[dict]:
        return [r for r in self.records if "round" in r]

    @property
    def train(self) -> list[dict]:
        return [r for r in self.records if r.get("phase") == "train"]

    @property
    def finished(self) -> bool:
        return any(r.get("phase") == "final" for r in self.records)

    def snapshots(self) -> list[Path]:
        return sorted((self.path / "clusters").glob("round_*.npz"))


@dataclass
class Group:
    """Runs with the same config except the seed; ``kw`` is its line style, the same in every figure."""
    config: dict
    runs: list[Run] = field(default_factory=list)
    kw: dict = field(default_factory=dict)

    def get(self, section: str, key: str):
        return self.config.get(section, {}).get(key)

    @property
    def prior(self) -> str:
        return self.get("cluster", "prior")

    @property
    def is_dp(self) -> bool:
        return self.prior != "kmeans"

    def curve(self, key: str, records: str = "rounds"):
        """(x epochs, mean, min, max) of ``key`` over seeds, on the epochs every seed has."""
        per_run = []
        for run in self.runs:
            recs = getattr(run, records)
            per_run.append({r["epoch"]: r[key] for r in recs if isinstance(r.get(key), (int, float))})
        common = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
        if not common:
            return None
        vals = np.array([[d[e] for e in common] for d in per_run], dtype=float)
        return np.array(common), vals.mean(0), vals.min(0), vals.max(0)

    def final(self, key: str):
        vals = [run.rounds[-1].get(key) for run in self.runs if run.rounds]
        vals = [v for v in vals if isinstance(v, (int, float))]
        return float(np.mean(vals)) if vals else None


def find_runs(runs_dir: Path) -> list[Run]:
    runs = []
    for metrics in sorted(Path(runs_dir).rglob("metrics.jsonl")):
        d = metrics.parent
        if not (d / "config.json").exists():
            continue
        records = read_records(d)
        if not any("round" in r for r in records):
            continue
        runs.append(Run(d, json.loads((d / "config.json").read_text()), records, read_jsonl(d / "lineage.jsonl")))
    return runs


def _key(config: dict, fields=None) -> str:
    if fields is not None:
        return json.dumps([config.get(s, {}).get(k) for s, k in fields])
    flat = {f"{s}.{k}": v for s, sec in config.items() for k, v in sec.items() if k not in NOT_COMPARED}
    return json.dumps(flat, sort_keys=True, default=str)


def group_runs(runs: list[Run]) -> list[Group]:
    groups: dict[str, Group] = {}
    for run in runs:
        groups.setdefault(_key(run.config), Group(run.config)).runs.append(run)
    return list(groups.values())


def split_settings(groups: list[Group]) -> dict[str, list[Group]]:
    """Groups per setting, k-means (by k) first, then DP by label; each group gets its fixed line style."""
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(setting_name(g.config), []).append(g)
    for name, gs in out.items():
        km = sorted([g for g in gs if not g.is_dp], key=lambda g: g.get("cluster", "k"))
        dp = [g for g in gs if g.is_dp]
        dp = [g for _, g in sorted(zip(labels(dp), dp), key=lambda p: p[0])]
        for i, g in enumerate(km):
            g.kw = S.kmeans_series(i)
        for i, g in enumerate(dp):
            g.kw = S.series(i + 1)  # series 0 is black, kept for the k-means look
        out[name] = km + dp
    return out


def setting_name(config: dict) -> str:
    d, t, m = config["data"], config["train"], config["model"]
    subset = f"n{d['subset']}" if d.get("subset") else "full"
    return f"{d['dataset']}-{subset}-e{t['epochs']}-w{m.get('width') or 'default'}"


# ---- labels and selections ------------------------------------------------------------------------------
def labels(groups: list[Group]) -> list[str]:
    """Legend labels that name what differs between these groups, among the DP runs and among the k-means runs
    (k-means: always its k); two groups that differ in a ``LABEL_FIELDS`` field never share a label."""
    def varying(family):
        return [(s, k, f) for s, k, f in LABEL_FIELDS if len({json.dumps(g.get(s, k)) for g in family}) > 1]

    fields = {True: varying([g for g in groups if g.is_dp]), False: varying([g for g in groups if not g.is_dp])}
    out = []
    for g in groups:
        # a flag is named when set, not spelled out as "=False" (or a weight as 0) on every other series
        parts = [f.format(g.get(s, k)) for s, k, f in fields[g.is_dp] if g.get(s, k) not in (None, False)]
        if not g.is_dp:
            text = ", ".join([f"k-means k={g.get('cluster', 'k')}"] + parts)
        else:
            text = "DP " + (", ".join(parts) if parts else
                            f"T={g.get('cluster', 'truncation')}, α={g.get('cluster', 'alpha'):g}")
        n = len(g.runs)
        out.append(text + (f" ({n} seeds)" if n > 1 else ""))
    return out


def _by_k(groups):
    return sorted([g for g in groups if not g.is_dp], key=lambda g: g.get("cluster", "k"))


def _top_dp(groups, n=MAX_SERIES - 3):
    """Up to n DP groups, best final NMI first (all when n or fewer)."""
    dp = [g for g in groups if g.is_dp]
    return sorted(dp, key=lambda g: -(g.final("nmi") or 0.0))[:n]


def _plot_curves(ax, groups, key, records="rounds", band=True, scale=1.0):
    """One line per group (k-means grey / open markers, DP in the series style); returns line count."""
    n = 0
    for g, name in zip(groups, labels(groups)):
        c = g.curve(key, records)
        if c is None:
            continue
        x, mean, lo, hi = c
        ax.plot(x, mean * scale, label=name, **g.kw)
        if band and len(g.runs) > 1:
            ax.fill_between(x, lo * scale, hi * scale, color=g.kw["color"], alpha=0.15, linewidth=0)
        n += 1
    return n


def _epoch_axis(ax, groups):
    epochs = max((g.get("train", "epochs") or 0) for g in groups)
    ax.set_xlabel("epoch (clustering round; last point = final trunk)")
    if epochs <= 12:
        ax.set_xticks(range(0, epochs + 1))


def _legend(ax, **kw):
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(**kw)


# ---- the figures ----------------------------------------------------------------------------------------
class Skip(Exception):
    """The runs this figure needs are not there (the message says which)."""


def fig_active_clusters(groups, out, name):
    """(1) K_active per round for several truncations T and concentrations alpha (the headline figure)."""
    dp = [g for g in groups if g.is_dp]
    if not dp:
        raise Skip("needs DP runs (--prior dp)")
    # Among the DP groups, keep those sharing the other settings that cover the most (T, alpha) pairs.
    others = [f for f in LABEL_FIELDS if f[1] not in ("truncation", "alpha")]
    families: dict[str, list[Group]] = {}
    for g in dp:
        families.setdefault(_key(g.config, [(s, k) for s, k, _ in others]), []).append(g)
    fam = max(families.values(), key=lambda gs: len({(g.get("cluster", "truncation"), g.get("cluster", "alpha"))
                                                   for g in gs}))
    fam = sorted(fam, key=lambda g: (g.get("cluster", "truncation"), g.get("cluster", "alpha")))[:MAX_SERIES]
    ts = sorted({g.get("cluster", "truncation") for g in fam})
    alphas = sorted({g.get("cluster", "alpha") for g in fam})
    with S.style():
        # One setting: a single panel with the final number written out (a lone bar says nothing more).
        fig, axes = S.figure(1, 2, size=(8.0, 3.4)) if len(fam) > 1 else S.figure(size=(5.2, 3.4))
        ax = axes[0, 0]
        for g in fam:
            t, a = g.get("cluster", "truncation"), g.get("cluster", "alpha")
            c = g.curve("k_active")
            if c is not None:
                ax.plot(c[0], c[1], label=f"T={t}, α={a:g}", **_t_alpha_style(ts.index(t), alphas.index(a)))
        for t in ts:
            ax.axhline(t, color="0.6", linewidth=0.8, linestyle=(0, (1, 3)))
            ax.annotate(f"T={t}", (ax.get_xlim()[0], t), textcoords="offset points", xytext=(2, 2), fontsize=7,
                        color="0.4")
        ax.set(ylabel="active clusters K_active\n(components with weight ≥ min(0.5 %, 1/2T))",
               title="Active clusters per round")
        if max(ts) / max(1, min(g.final("k_active") or 1 for g in fam)) > 30:
            ax.set_yscale("log")
        _epoch_axis(ax, fam)
        if len(fam) == 1:
            g = fam[0]
            seeds = f" (mean of {len(g.runs)} seeds)" if len(g.runs) > 1 else ""
            ax.text(0.98, 0.5, f"after the last round:\nK_active = {g.final('k_active'):.3g} of T = {ts[0]}{seeds}",
                    transform=ax.transAxes, ha="right", va="center", fontsize=9,
                    bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.6"})
            ax.set_title(f"Active clusters per round (T={ts[0]}, α={alphas[0]:g})")
        else:
            _legend(ax, title="marker: T, line: α", fontsize=7, ncol=1 + (len(fam) > 4))
            _final_k_panel(axes[0, 1], fam, ts, alphas)
        fig.suptitle(f"Clusters inferred by the DP-GMM ({name})")
        return S.save(fig, out, "fig1_active_clusters")


def _t_alpha_style(t_index: int, alpha_index: int) -> dict:
    """Marker and colour carry T, the line style carries alpha (the same in both panels of fig 1)."""
    return {"color": S.COLORS[t_index % 8], "marker": S.MARKERS[t_index % 8],
            "linestyle": S.LINESTYLES[alpha_index % 4]}


def _final_k_panel(ax, fam, ts, alphas):
    """K_active after the last round against T (one line per alpha; against alpha when only one T ran), each
    point labelled with its value. The x positions are the settings in order, and the series are spread
    a little sideways, so that equal values of different series stay visible."""
    def final(t, a):
        return next((g.final("k_active") for g in fam if g.get("cluster", "truncation") == t
                     and g.get("cluster", "alpha") == a), None)

    by_t = len(ts) > 1
    xs, lines = (ts, alphas) if by_t else (alphas, ts)
    for j, line in enumerate(lines):
        shift = 0.06 * (j - (len(lines) - 1) / 2)
        pts = [(i + shift, final(x, line) if by_t else final(line, x)) for i, x in enumerate(xs)]
        pts = [(i, k) for i, k in pts if k is not None]
        ax.plot(*zip(*pts), label=f"α={line:g}" if by_t else f"T={line}", **S.series(j))
        for i, k in pts:
            left = shift < 0  # labels on the side the series is shifted to, away from the others
            ax.annotate(f"{k:.3g}", (i, k), textcoords="offset points", xytext=(-5 if left else 5, 3), fontsize=7,
                        ha="right" if left else "left")
    if by_t:
        ax.plot(range(len(ts)), ts, color="0.6", linewidth=0.8, linestyle=(0, (1, 3)), label="K = T (upper bound)")
    ax.set_xticks(range(len(xs)), [f"T={t}" for t in ts] if by_t else [f"α={a:g}" for a in alphas])
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set(xlabel="truncation T (upper bound on clusters)" if by_t else "concentration α",
           ylabel="K_active after the last round", title="Final active clusters")
    ax.set_ylim(bottom=0)
    _legend(ax)


def fig_nmi(groups, out, name):
    """(2) NMI vs classes per round, k-means against DP variants."""
    km, dp = _by_k(groups), _top_dp(groups)
    if not km or not dp:
        raise Skip("needs both k-means and DP runs")
    if not any(g.curve("nmi") for g in km + dp):
        raise Skip("runs have no NMI (dataset without labels)")
    with S.style():
        fig, axes = S.figure(size=(5.6, 3.6))
        ax = axes[0, 0]
        _plot_curves(ax, km + dp, "nmi")
        ax.set(ylabel="NMI vs true classes", ylim=(0, 1),
               title=f"Clustering quality: k-means vs DP ({name})")
        _epoch_axis(ax, km + dp)
        _legend(ax, loc="center left", bbox_to_anchor=(1.01, 0.5))
        return S.save(fig, out, "fig2_nmi_kmeans_vs_dp")


def fig_stability(groups, out, name):
    """(3) NMI(t, t-1): how much each round's clustering agrees with the previous one."""
    sel = _by_k(groups) + _top_dp(groups)
    if not any(g.curve("nmi_prev") for g in sel):
        raise Skip("needs runs with at least two clustering rounds")
    with S.style():
        fig, axes = S.figure(size=(5.6, 3.6))
        ax = axes[0, 0]
        _plot_curves(ax, sel, "nmi_prev")
        ax.set(ylabel="NMI(round t, round t-1)", ylim=(0, 1),
               title=f"Stability of the clustering between rounds ({name})")
        _epoch_axis(ax, sel)
        _legend(ax, loc="center left", bbox_to_anchor=(1.01, 0.5))
        return S.save(fig, out, "fig3_stability")


def fig_warm_start(groups, out, name):
    """(4) ELBO and iterations per round, cold (warm_start none) vs warm (init / prior)."""
    dp = [g for g in groups if g.is_dp]
    rest = [(s, k) for s, k, _ in LABEL_FIELDS if k not in ("warm_start", "prior_decay")]
    families: dict[str, list[Group]] = {}
    for g in dp:
        families.setdefault(_key(g.config, rest), []).append(g)
    fams = [f for f in families.values() if {"none"} < {g.get("cluster", "warm_start") for g in f}
            or ("none" in {g.get("cluster", "warm_start") for g in f} and len({g.get("cluster", "warm_start")
                                                                                for g in f}) > 1)]
    if not fams:
        raise Skip("needs DP runs that differ only in --warm-start (none and init/prior)")
    fam = sorted(max(fams, key=len), key=lambda g: ["none", "init", "prior"].index(g.get("cluster", "warm_start"))
                 if g.get("cluster", "warm_start") in ("none", "init", "prior") else 9)[:MAX_SERIES]
    names = [f"warm start: {g.get('cluster', 'warm_start')}" + (" (cold)" if g.get("cluster", "warm_start") == "none"
                                                               else "")
             + (f", ρ={g.get('cluster', 'prior_decay'):g}" if g.get("cluster", "warm_start") == "prior" else "")
             for g in fam]
    with S.style():
        fig, axes = S.figure(1, 3, size=(10.5, 3.3))
        for i, (g, label) in enumerate(zip(fam, names)):
            kw = S.series(i)
            for ax, key in ((axes[0, 0], "objective"), (axes[0, 1], "n_iter")):
                c = g.curve(key)
                if c is not None:
                    ax.plot(c[0], c[1], label=label, **kw)
            # ELBO per iteration in the second round (round 1): the first round a warm start can help.
            run = g.runs[0]
            hist = next((r.get("history") for r in run.rounds if r.get("round") == 1 and r.get("history")), None)
            if hist:
                axes[0, 2].plot(np.arange(1, len(hist) + 1), hist, label=label, markevery=max(1, len(hist) // 10),
                                **kw)
        axes[0, 0].set(ylabel="ELBO per point (nats) at convergence", title="Objective per round")
        axes[0, 1].set(ylabel="coordinate-ascent iterations", title="Iterations to converge per round")
        axes[0, 2].set(xlabel="iteration", ylabel="ELBO per point (nats)",
                       title="Convergence in round 1 (epoch of 2nd clustering)")
        for ax in axes[0, :2]:
            _epoch_axis(ax, fam)
        _legend(axes[0, 1])
        _legend(axes[0, 2], loc="lower right")
        fig.suptitle(f"Cold vs warm-started DP-GMM ({name}; ELBOs of different rounds use different features)")
        return S.save(fig, out, "fig4_warm_start_elbo")


def _final_weights(run: Run):
    snaps = run.snapshots()
    if snaps:
        with np.load(snaps[-1]) as z:
            return np.sort(np.asarray(z["weights"], dtype=float))[::-1]
    w = run.rounds[-1].get("weights") if run.rounds else None
    return np.sort(np.asarray(w, dtype=float))[::-1] if w else None


def fig_weights(groups, out, name):
    """(5) Final mixture-weight spectra: sorted weights on a log scale."""
    sel = _by_k(groups) + _top_dp(groups)
    sel = [g for g in sel if _final_weights(g.runs[0]) is not None]
    if not sel:
        raise Skip("needs cluster snapshots or weights")
    names = labels(sel)
    with S.style():
        fig, axes = S.figure(size=(5.8, 3.6))
        ax = axes[0, 0]
        floor = 1e-5
        for g, label in zip(sel, names):
            w = np.maximum(_final_weights(g.runs[0]), floor)
            ax.plot(np.arange(1, len(w) + 1), w, label=label + (" (seed 0)" if len(g.runs) > 1 else ""),
                    markevery=max(1, len(w) // 12), drawstyle="steps-mid", **g.kw)
        for cut in sorted({active_threshold(len(_final_weights(g.runs[0]))) for g in sel}):
            ax.axhline(cut, color="0.5", linewidth=0.8, linestyle=(0, (4, 2)))
            ax.annotate(f"active cut {100 * cut:.2g} %", (1, cut), textcoords="offset points", xytext=(2, -10),
                        fontsize=7, color="0.35")
        ax.set(xscale="log" if max(len(_final_weights(g.runs[0])) for g in sel) > 50 else "linear", yscale="log",
               xlabel="component rank (largest first)", ylabel="mixture weight (fraction of points)",
               title=f"Final weight spectra ({name})")
        _legend(ax, loc="center left", bbox_to_anchor=(1.01, 0.5))
        return S.save(fig, out, "fig5_weight_spectra")


def fig_time_share(groups, out, name):
    """(6) Share of each epoch spent clustering (extract + whiten + fit), and the median time split."""
    sel = _by_k(groups) + _top_dp(groups)
    sel = [g for g in sel if g.curve("cluster_share", "train") is not None]
    if not sel:
        raise Skip("needs epochs with timing records")
    names = labels(sel)
    with S.style():
        fig, axes = S.figure(1, 2, size=(10.0, 3.6))
        ax = axes[0, 0]
        _plot_curves(ax, sel, "cluster_share", records="train", scale=100)
        ax.set(ylabel="whitening + clustering, % of epoch time", ylim=(0, 100),
               title="Clustering share per epoch")
        epochs = max(g.get("train", "epochs") for g in sel)
        if epochs <= 12:
            ax.set_xticks(range(epochs))
        ax.set_xlabel("epoch (only epochs that recluster)")
        ax = axes[0, 1]
        parts = [("extract_seconds", "feature extraction"), ("cluster_seconds", "whitening + clustering"),
                 ("train_seconds", "training"), ("other", "other (kNN eval, checkpoint)")]
        y = np.arange(len(sel))
        left = np.zeros(len(sel))
        for j, (key, label) in enumerate(parts):
            vals = []
            for g in sel:
                recs = [r for run in g.runs for r in run.train if "cluster_seconds" in r]
                if key == "other":
                    v = [max(0.0, r["epoch_seconds"] - sum(r.get(k, 0.0) for k, _ in parts[:3])) for r in recs]
                else:
                    v = [r.get(key, 0.0) for r in recs]
                vals.append(float(np.median(v)) if v else 0.0)
            ax.barh(y, vals, left=left, color=S.BAR_GREYS[j], edgecolor="k", hatch=S.HATCHES[j], label=label)
            left += np.array(vals)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set(xlabel="seconds (median over epochs that recluster)", title="Where a reclustering epoch's time goes")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        fig.suptitle(f"Cost of the clustering step ({name})")
        axes[0, 0].legend(fontsize=7, loc="upper right")
        return S.save(fig, out, "fig6_cluster_time_share")


EVENTS = [("n_kept", "kept"), ("n_split", "split"), ("n_merged", "merged"), ("n_born", "born"), ("n_died", "died")]


def fig_lineage(groups, out, name):
    """(7) Component lineage: kept / split / merged / born / died components per round (stacked bars)."""
    cand = [g for g in _by_k(groups)[:1] + _top_dp(groups, 3) if g.runs[0].lineage]
    if not cand:
        raise Skip("needs lineage.jsonl (runs with at least two clustering rounds)")
    names = labels(cand)
    with S.style():
        fig, axes = S.figure(1, len(cand), size=(3.2 * len(cand) + 0.6, 3.4), sharey=False)
        for ax, g, label in zip(axes[0], cand, names):
            lin = g.runs[0].lineage
            x = np.array([e["round"] for e in lin])
            ax.plot(x, [e.get("n_active_new", np.nan) for e in lin], color="0.75", linewidth=4, solid_capstyle="butt",
                    label="active after the round")
            for j, (key, ev) in enumerate(EVENTS):
                ax.plot(x, [e.get(key, 0) for e in lin], label=ev, **S.series(j))
            ax.set(title=label + (" (seed 0)" if len(g.runs) > 1 else ""),
                   xlabel="round t (compared with round t-1)", ylabel="number of components")
            ax.set_ylim(bottom=0)
            if len(x) <= 12:
                ax.set_xticks(x)
        axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.suptitle(f"Component lineage between consecutive rounds ({name}): active components of round t-1 "
                     "kept / split / merged, of round t born / died (active = weight ≥ min(0.5 %, 1/2T))", fontsize=9)
        return S.save(fig, out, "fig7_lineage")


def fig_images(groups, out, name, which: str):
    """(8) Sample images of the largest clusters of a run's final snapshot (8 clusters x 8 images)."""
    sel = [g for g in groups if g.is_dp == (which == "dp")]
    sel = sorted(sel, key=lambda g: -(g.final("nmi") or 0.0))
    sel = [g for g in sel if g.runs[0].snapshots()]
    if not sel:
        raise Skip(f"needs a {which} run with cluster snapshots")
    g = sel[0]
    run = g.runs[0]
    d = run.config["data"]
    try:
        ds = _load_train(d["dataset"], d.get("data_root"), d.get("subset"), run.config["run"]["seed"],
                         d.get("image_size"))
    except Exception as err:  # data not on this machine: the figure cannot be drawn, the others can
        raise Skip(f"cannot load {d['dataset']} for {run.path.name}: {err}") from None
    with np.load(run.snapshots()[-1]) as z:
        labels_, weights, resp = z["labels"], z["weights"], z["resp_values"][:, 0].astype(float)
    if len(labels_) != len(ds.images):
        raise Skip(f"snapshot of {run.path.name} has {len(labels_)} points but the dataset gives {len(ds.images)}")
    rng = np.random.default_rng(0)
    counts = np.bincount(labels_, minlength=len(weights))
    top = [c for c in np.argsort(-weights, kind="stable") if counts[c] > 0][:8]
    images = ds.images.numpy()
    classes = ds.classes
    with S.style():
        # One mosaic image per row (8 thumbnails with a white gap): far fewer artists than 64 small axes.
        fig, axes = S.figure(len(top), 2, size=(7.2, 0.85 * len(top) + 0.7),
                             gridspec_kw={"width_ratios": [1.9, 8.2], "wspace": 0.01})
        c_, h, w = images.shape[1:]
        for row, c in enumerate(top):
            members = np.flatnonzero(labels_ == c)
            order = np.lexsort((rng.random(len(members)), -resp[members]))  # most confident first
            pick = members[order][:8]
            text = f"cluster {c}\n{100 * weights[c]:.1f} % of points\n(n={len(members)})"
            if ds.labels is not None:
                cls, cnt = Counter(ds.labels[members].tolist()).most_common(1)[0]
                cname = classes[cls] if classes and d["dataset"] != "synthetic" else f"#{cls}"
                text += f"\nmost common class {cname}\n({100 * cnt / len(members):.0f} % of the cluster)"
            axes[row, 0].text(0.98, 0.5, text, ha="right", va="center", fontsize=7, transform=axes[row, 0].transAxes)
            gap = 2
            mosaic = np.full((c_, h, 8 * (w + gap) - gap), 255, dtype=np.uint8)
            for col, idx in enumerate(pick):
                mosaic[:, :, col * (w + gap): col * (w + gap) + w] = images[idx]
            if c_ == 1:
                axes[row, 1].imshow(mosaic[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                axes[row, 1].imshow(np.transpose(mosaic, (1, 2, 0)), interpolation="nearest")
            for ax in axes[row]:
                ax.axis("off")
        label = labels([g])[0]
        fig.suptitle(f"Largest clusters after the last round: {label}\n({run.path.name}, {name}; "
                     f"rows by weight, 8 most confident images each)", fontsize=9)
        return S.save(fig, out, f"fig8_images_{which}")


@functools.lru_cache(maxsize=2)
def _load_train(dataset, root, subset, seed, image_size):
    """The training images a run clustered (same subset and seed, so snapshot labels index them)."""
    from bayes_dc.data import load_dataset

    return load_dataset(dataset, "train", root=root, subset=subset, seed=seed, image_size=image_size,
                        download=False)


FIGURES = [("fig1 active clusters", fig_active_clusters), ("fig2 NMI k-means vs DP", fig_nmi),
           ("fig3 stability", fig_stability), ("fig4 warm start ELBO", fig_warm_start),
           ("fig5 weight spectra", fig_weights), ("fig6 clustering time share", fig_time_share),
           ("fig7 lineage", fig_lineage),
           ("fig8 images (DP)", lambda g, o, n: fig_images(g, o, n, "dp")),
           ("fig8 images (k-means)", lambda g, o, n: fig_images(g, o, n, "kmeans"))]


def make_all(runs_dir: str | Path, out_dir: str | Path, verbose: bool = True) -> list[Path]:
    """Write every figure that the runs under RUNS_DIR allow into OUT_DIR; returns the written files."""
    say = print if verbose else (lambda *a, **k: None)
    runs = find_runs(Path(runs_dir))
    if not runs:
        say(f"no run directories (metrics.jsonl + config.json with a clustering round) under {runs_dir}")
        return []
    settings = split_settings(group_runs(runs))
    say(f"{len(runs)} runs in {len(settings)} setting(s): {', '.join(settings)}")
    written: list[Path] = []
    for setting, groups in settings.items():
        out = Path(out_dir) / setting if len(settings) > 1 else Path(out_dir)
        for title, fn in FIGURES:
            try:
                written += fn(groups, out, setting)
            except Skip as why:
                say(f"skipped {title} for {setting}: {why}")
    say("written:")
    for p in written:
        say(f"  {p}")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs_dir", help="folder searched recursively for run directories")
    p.add_argument("out_dir", help="where the PNG + PDF files go")
    args = p.parse_args(argv)
    make_all(args.runs_dir, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
