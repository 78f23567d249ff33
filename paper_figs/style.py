"""One look for every paper figure: readable in black and white (line style + marker + grey level carry the
series, colour only helps), a fixed size per layout, PNG (screen) + PDF (paper) output.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bayes_dc.evaluation.plots import STYLE as RUN_STYLE

STYLE = {**RUN_STYLE, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "lines.linewidth": 1.4, "lines.markersize": 5, "savefig.dpi": 150, "pdf.fonttype": 42,
         "figure.titlesize": 11}

# Series i gets LINESTYLES[i % 4], MARKERS[i % 8] and COLORS[i % 8]; any two of the first 8 series differ in
# marker, and the colours (Okabe-Ito, colour-blind safe) also differ in grey level.
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
COLORS = ["#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#999999"]
# k-means baselines: black / grey, solid, open markers, so they read as "the reference" in any print.
KMEANS_GREYS = ["0.0", "0.35", "0.6"]
# Hatches for stacked bars (lineage events, time split).
HATCHES = ["", "//", "..", "xx", "\\\\", "oo"]
BAR_GREYS = ["0.15", "0.45", "0.7", "0.9", "1.0", "0.55"]

WIDE = (7.0, 3.2)     # two panels side by side
SINGLE = (4.8, 3.4)   # one panel


def series(i: int) -> dict:
    """Matplotlib kwargs for the i-th DP (or other) series."""
    return {"color": COLORS[i % len(COLORS)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)]}


def kmeans_series(i: int) -> dict:
    """Kwargs for the i-th k-means baseline: grey levels, solid, open markers."""
    return {"color": KMEANS_GREYS[i % len(KMEANS_GREYS)], "linestyle": "-", "marker": MARKERS[i % len(MARKERS)],
            "markerfacecolor": "white", "linewidth": 1.8}


def figure(nrows: int = 1, ncols: int = 1, size=None, **kw):
    """plt.subplots under the paper style (call inside ``with style():``)."""
    return plt.subplots(nrows, ncols, figsize=size or (SINGLE if nrows * ncols == 1 else WIDE),
                        constrained_layout=True, squeeze=False, **kw)


def style():
    return plt.rc_context(STYLE)


def save(fig, out_dir: Path, name: str) -> list[Path]:
    """Write OUT_DIR/NAME.png and .pdf; close the figure; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight")
    plt.close(fig)
    return paths
