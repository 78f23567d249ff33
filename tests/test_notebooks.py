"""experiments/notebooks: every notebook runs in smoke mode (tiny sweep) without errors, and is stored stripped."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from test_sweep import tiny_sweep  # noqa: F401  (session fixture: the finished tiny sweep)

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "experiments" / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
EXPECTED = {"relabel_frequency", "warm_start", "target_type", "truncation_alpha", "dp_vs_kmeans"}


def tracked_notebooks() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--", "experiments/notebooks/*.ipynb"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return sorted({ROOT / p for p in out} | set(NOTEBOOKS))  # tracked ones, and new ones before their commit


def test_all_ablation_notebooks_exist():
    assert EXPECTED <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", tracked_notebooks(), ids=lambda p: p.stem)
def test_notebook_is_valid_and_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs before commit"
    source = "\n".join(c.source for c in nb.cells)
    assert "SMOKE = False" in source and "BAYES_DC_SMOKE" in source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, tiny_sweep, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("BAYES_DC_SMOKE", "1")
    monkeypatch.setenv("BAYES_DC_SMOKE_DIR", str(tiny_sweep))  # reuse the session's finished tiny sweep
    nb = nbformat.read(path, as_version=4)
    # The "python3" kernel spec resolves to this interpreter (ipykernel's native kernel), i.e. the venv.
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("text/markdown" in o.get("data", {}) and "|---" in o["data"]["text/markdown"] for o in outputs), \
        "no table shown"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure shown"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "none -- run the sweep" not in text


def test_family_is_the_largest_ablation_of_the_varied_options(tiny_sweep):
    """The notebooks' run selection (bayes_dc.evaluation.report): runs equal in everything but the varied options and
    the bookkeeping ones (name, seed, ...), the largest such set."""
    from bayes_dc.evaluation.report import curve, family, load_runs

    runs = load_runs(tiny_sweep)
    assert {r["name"] for r in family(runs, ["warm_start"])} == {"dp_T20_warm-init_r1", "dp_T20_warm-none_r1"}
    assert [r["name"] for r in family(runs, ["truncation"])] == ["dp_T10_warm-init_r1", "dp_T20_warm-init_r1"]
    run = next(r for r in runs if r["name"] == "dp_T20_warm-init_r2")  # relabels every 2 of 2 epochs + final
    assert curve(run, "k_active")[0] == (0, 2)
