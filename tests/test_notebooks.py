"""experiments/notebooks: every notebook runs in smoke mode (tiny sweep) without errors, in ONE kernel for all of
them (experiments/notebooks/execute.py), and is stored executed on the committed results file, so a reader
sees its tables and figures without running it."""
import importlib.util
import json
import subprocess
from pathlib import Path

import nbformat
import pytest

from test_sweep import tiny_sweep  # noqa: F401  (session fixture: the finished tiny sweep)

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "experiments" / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
EXPECTED = {"relabel_frequency", "warm_start", "target_type", "truncation_alpha", "dp_vs_kmeans"}
RESULTS = NB_DIR / "results" / "grid.jsonl"


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tracked_notebooks() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--", "experiments/notebooks/*.ipynb"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return sorted({ROOT / p for p in out} | set(NOTEBOOKS))  # tracked ones, and new ones before their commit


def shown(nb) -> tuple[list, list[str], list, str]:
    """(error outputs, markdown tables shown, figures, stream text) of an executed notebook."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    tables = [o["data"]["text/markdown"] for o in outputs
              if "text/markdown" in o.get("data", {}) and "|---" in o["data"]["text/markdown"]]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    return errors, tables, figures, text


def test_all_ablation_notebooks_exist():
    assert EXPECTED <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", tracked_notebooks(), ids=lambda p: p.stem)
def test_notebook_is_stored_executed_with_a_table_and_a_figure(path):
    """Committed with outputs of the committed results file: a table with rows, a figure, no error, every code
    cell run in order, and the smoke switch off."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"{path.name}: store it executed (python experiments/notebooks/execute.py)"
    errors, tables, figures, text = shown(nb)
    assert not errors, f"{path.name}: stored with an error output"
    assert tables and all(len(t.strip().splitlines()) > 2 for t in tables), f"{path.name}: no table with rows"
    assert figures, f"{path.name}: no figure stored"
    assert "results/grid.jsonl" in text and "none -- run the sweep" not in text, \
        f"{path.name}: stored outputs are not of the committed results file"
    source = "\n".join(c.source for c in nb.cells)
    assert "SMOKE = False" in source and "BAYES_DC_SMOKE" in source
    assert "seed" in nb.cells[0].source and "collect_results.py" in nb.cells[0].source, \
        f"{path.name}: the first cell says which grid, command, date and seeds made the results"


def test_committed_results_file_holds_records_not_checkpoints():
    """The notebooks' default input: one line per run with its name, config and metrics records, small."""
    from bayes_dc.evaluation.report import load_runs

    lines = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    assert lines and all(set(run) == {"name", "dir", "config", "records"} for run in lines)
    assert RESULTS.stat().st_size < 2_000_000
    runs = load_runs(RESULTS)
    assert {r["opts"]["prior"] for r in runs} >= {"kmeans", "dp"}
    # committed and shared: folder names only, no path of the machine the runs were made on
    paths = [value for run in lines for section in run["config"].values() for value in section.values()
             if isinstance(value, str) and "/" in value] + [run["dir"] for run in lines]
    assert not [p for p in paths if Path(p).is_absolute()], paths


@pytest.fixture(scope="module")
def smoke_executed(tiny_sweep, tmp_path_factory):  # noqa: F811
    """Every notebook executed in smoke mode on the session's tiny sweep, in one kernel: {stem: notebook or the
    exception its execution raised}."""
    execute = load_script(NB_DIR / "execute.py")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BAYES_DC_SMOKE", "1")  # read by the kernel, which inherits this environment
        mp.setenv("BAYES_DC_SMOKE_DIR", str(tiny_sweep))  # reuse the session's finished tiny sweep
        done = {}
        for path, nb in execute.execute_notebooks(NOTEBOOKS):
            done[path.stem] = nb
    return done


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, smoke_executed):
    errors, tables, figures, text = shown(smoke_executed[path.stem])
    assert not errors
    assert tables, "no table shown"
    assert figures, "no figure shown"
    assert "none -- run the sweep" not in text


def test_results_file_reads_as_the_run_directories(tiny_sweep, tmp_path):  # noqa: F811
    """collect_results.py's file gives load_runs the same runs (options, records, summaries) as the directories,
    and it refuses a directory that holds no run."""
    from bayes_dc.evaluation.report import load_runs

    collect = load_script(ROOT / "experiments" / "collect_results.py")
    out = tmp_path / "results.jsonl"
    collect.main([str(tiny_sweep), "--out", str(out)])
    from_dirs, from_file = load_runs(tiny_sweep), load_runs(out)
    assert [r["name"] for r in from_file] == [r["name"] for r in from_dirs] and from_dirs
    for a, b in zip(from_dirs, from_file):
        assert {k: v for k, v in a.items() if k != "dir"} == {k: v for k, v in b.items() if k != "dir"}
        # the file names the run's folder and the run, never the machine's path (it is committed and shared)
        assert b["dir"] == Path(a["dir"].resolve().parent.name) / a["dir"].name and not b["dir"].is_absolute()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no run directory"):
        collect.main([str(tmp_path / "empty"), "--out", str(out)])


def test_family_is_the_largest_ablation_of_the_varied_options(tiny_sweep):  # noqa: F811
    """The notebooks' run selection (bayes_dc.evaluation.report): runs equal in everything but the varied options and
    the bookkeeping ones (name, seed, ...), the largest such set."""
    from bayes_dc.evaluation.report import curve, family, load_runs

    runs = load_runs(tiny_sweep)
    assert {r["name"] for r in family(runs, ["warm_start"])} == {"dp_T20_warm-init_r1", "dp_T20_warm-none_r1"}
    assert [r["name"] for r in family(runs, ["truncation"])] == ["dp_T10_warm-init_r1", "dp_T20_warm-init_r1"]
    run = next(r for r in runs if r["name"] == "dp_T20_warm-init_r2")  # relabels every 2 of 2 epochs + final
    assert curve(run, "k_active")[0] == (0, 2)
    # an option that a later version of the code added (recorded by one run only) does not split the family
    newer = [dict(r, opts={**r["opts"], "option_added_later": "off"}) if r["name"] == "dp_T10_warm-init_r1" else r
             for r in runs]
    assert [r["name"] for r in family(newer, ["truncation"])] == ["dp_T10_warm-init_r1", "dp_T20_warm-init_r1"]
