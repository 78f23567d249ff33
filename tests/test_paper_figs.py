"""paper_figs/make_all.py: every figure from the tiny sweep's run directories, without training code."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from test_sweep import tiny_sweep  # noqa: F401  (session fixture: the finished tiny sweep)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "paper_figs"))

FIGURES = ["fig1_active_clusters", "fig2_nmi_kmeans_vs_dp", "fig3_stability", "fig4_warm_start_elbo",
           "fig5_weight_spectra", "fig6_cluster_time_share", "fig7_lineage", "fig8_images_dp", "fig8_images_kmeans"]
# clustering.base (the seam's ClusterResult and the K_active cut) is allowed; the backends are not.
TRAINING = ("bayes_dc.loop.pipeline", "bayes_dc.loop.trainer", "bayes_dc.models.nets", "bayes_dc.clustering.kmeans",
            "bayes_dc.clustering.dpgmm", "bayes_dc.clustering.pyro_model", "bayes_dc.models.features", "bayes_dc.loop.targets")

CHECK = """
import json, runpy, sys
sys.argv = ["make_all.py", sys.argv[1], sys.argv[2]]
sys.path.insert(0, "paper_figs")   # as `python paper_figs/make_all.py` does: the script's folder (style.py) first
try:
    runpy.run_path("paper_figs/make_all.py", run_name="__main__")
except SystemExit as stop:
    assert not stop.code, stop.code
print("LOADED " + json.dumps(sorted(m for m in sys.modules if m.startswith("bayes_dc"))))
"""


def test_make_all_writes_every_figure_without_training_code(tiny_sweep, tmp_path):
    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, "-c", CHECK, str(tiny_sweep), str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in FIGURES:
        for ext in ("png", "pdf"):
            path = out / f"{name}.{ext}"
            assert path.exists() and path.stat().st_size > 1000, f"{path} missing or empty\n{proc.stdout}"
            assert str(path) in proc.stdout  # listed as written
    assert "skipped" not in proc.stdout
    loaded = json.loads(proc.stdout.split("LOADED ", 1)[1])
    assert not [m for m in loaded if m.startswith(TRAINING)], loaded


def test_missing_runs_skip_figures_with_a_note(tiny_sweep, tmp_path, capsys, monkeypatch):
    import make_all

    cheap = [f for f in make_all.FIGURES if not f[0].startswith(("fig6", "fig8"))]  # the first test draws them
    monkeypatch.setattr(make_all, "FIGURES", cheap)

    assert make_all.make_all(tmp_path / "nothing", tmp_path / "f0") == []
    assert "no run directories" in capsys.readouterr().out
    only_km = tmp_path / "km"
    shutil.copytree(tiny_sweep / "kmeans_k10_r1", only_km / "kmeans_k10_r1")
    written = make_all.make_all(only_km, tmp_path / "f1")
    out = capsys.readouterr().out
    assert "skipped fig1 active clusters" in out and "skipped fig4 warm start" in out
    names = {p.stem for p in written}
    assert {"fig3_stability", "fig5_weight_spectra", "fig7_lineage"} <= names
    assert "fig1_active_clusters" not in names


def test_fig1_with_one_dp_setting_is_one_panel_with_the_number(tiny_sweep, tmp_path, monkeypatch):
    """One (T, alpha) setting: no lone bar; the final K_active is written on the single per-round panel."""
    import make_all
    from matplotlib.image import imread

    monkeypatch.setattr(make_all, "FIGURES", make_all.FIGURES[:1])
    one = tmp_path / "one"
    shutil.copytree(tiny_sweep / "dp_T20_warm-init_r1", one / "dp_T20_warm-init_r1")
    texts = []
    real_text = make_all.S.plt.Axes.text
    monkeypatch.setattr(make_all.S.plt.Axes, "text", lambda ax, *a, **k: texts.append(a[2]) or real_text(ax, *a, **k))
    [png, _] = make_all.make_all(one, tmp_path / "f1", verbose=False)
    k_final = json.loads((one / "dp_T20_warm-init_r1" / "metrics.jsonl").read_text().splitlines()[-1])["k_active"]
    assert any(f"K_active = {k_final} of T = 20" in t for t in texts), texts
    [several, _] = make_all.make_all(tiny_sweep, tmp_path / "f2", verbose=False)
    assert imread(png).shape[1] < 0.8 * imread(several).shape[1]  # one panel instead of two


def test_several_settings_are_never_mixed(tiny_sweep, tmp_path):
    import make_all

    runs = make_all.find_runs(tiny_sweep)
    other = json.loads(json.dumps(runs[0].config))
    other["data"]["subset"] = 999
    runs.append(make_all.Run(Path("x"), other, runs[0].records, []))
    settings = make_all.split_settings(make_all.group_runs(runs))
    assert sorted(len(g) for g in settings.values()) == [1, len(runs) - 1]


def test_legend_labels_tell_apart_every_group_that_differs_in_a_label_field():
    """Two series with one legend label cannot be read; runs that differ only in the space's loss weight, or
    k-means runs that differ only in their space, once shared one."""
    import itertools

    import make_all

    def group(prior, k=None, reduce="umap", two_views=False, space_weight=0.0):
        return make_all.Group(config={"cluster": {"prior": prior, "k": k, "truncation": 300, "alpha": 1.0},
                                      "features": {"reduce": reduce},
                                      "train": {"two_views": two_views, "space_weight": space_weight}})

    groups = [group("kmeans", 10, "pca"), group("kmeans", 100, "pca"), group("kmeans", 100, "umap"),
              group("dp"), group("dp", reduce="pumap"), group("dp", reduce="pumap", two_views=True),
              group("dp", reduce="pumap", two_views=True, space_weight=1.0)]
    names = make_all.labels(groups)
    for (g, a), (h, b) in itertools.combinations(zip(groups, names), 2):
        assert g.config == h.config or a != b, (a, g.config, h.config)
    assert all(name.startswith("k-means k=") for name, g in zip(names, groups) if not g.is_dp)
