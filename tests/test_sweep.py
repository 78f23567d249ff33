"""experiments/sweep.py: grid expansion and collapsing, names, resumable execution, summary tables, errors.

``tiny_sweep`` (session-wide) runs the ``tiny`` preset once -- k-means and DP, warm start none / init, two
truncations, two alphas, soft targets, relabel every 2 -- and is reused by test_paper_figs and test_notebooks
(they import it; a second call finds every run finished and starts nothing).
"""
import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

import sweep  # noqa: E402

DP_FIELDS = {name for name, (_, f) in sweep.OPTIONS.items() if f.metadata.get("backend") == "dp"}
METRIC_KEYS = ("nmi", "acc", "ari", "k_active", "knn", "nmi_prev", "epoch_s", "cluster_share")


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """Directory of the finished tiny sweep (made once per session; about 15 s on 2 cores)."""
    out = tmp_path_factory.getbasetemp() / "tiny_sweep"
    sweep.run_sweep("tiny", out, progress=False, verbose=False)
    return out


def test_tiny_sweep_has_one_filled_row_per_run_in_csv_and_md(tiny_sweep):
    runs = sweep.plan("tiny")
    assert {r.options.get("prior") for r in runs} == {"kmeans", "dp"}
    with open(tiny_sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [r.name for r in runs]
    for row in rows:
        assert row["finished"] == "True", row["name"]
        for key in METRIC_KEYS:
            assert row[key] not in ("", "None"), (row["name"], key)
            float(row[key])
    md = (tiny_sweep / "summary.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    assert len(table) == len(runs)
    for line, run in zip(table, runs):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == run.name
        assert "–" not in cells[-len(sweep.METRICS):], line  # every metric filled in
    plan = json.loads((tiny_sweep / "sweep.json").read_text())
    assert [r["name"] for r in plan["runs"]] == [r.name for r in runs]


def test_kmeans_ignores_dp_options_and_nothing_runs_twice():
    spec = {"base": {"dataset": "synthetic", "truncation": 20, "sharpen": 0.5},
            "grid": {"prior": ["kmeans", "dp"], "warm_start": ["none", "init", "prior"], "targets": ["hard", "soft"],
                     "alpha": [1, 5], "prior_decay": [0.5, 1.0], "k": [10, 30]},
            "runs": [{"prior": "kmeans", "k": 10, "alpha": 3}, {"prior": "dp", "warm_start": "init", "alpha": 1,
                                                              "targets": "soft", "k": 99}]}
    runs = sweep.plan(spec)
    km = [r for r in runs if r.options["prior"] == "kmeans"]
    dp = [r for r in runs if r.options["prior"] == "dp"]
    assert len(km) == 2                     # k in {10, 30}; warm/targets/alpha/decay collapsed, explicit dupe dropped
    assert len(dp) == 2 * 2 * (1 + 1 + 2)   # alpha x targets x (none, init, prior x 2 decays); k dropped
    for r in km:
        assert not set(r.options) & DP_FIELDS and "sharpen" not in r.options
        assert r.options["targets"] == "hard" and r.options["head"] == "reset"
    for r in dp:
        assert "k" not in r.options
        assert ("prior_decay" in r.options) == (r.options["warm_start"] == "prior")
        assert ("sharpen" in r.options) == (r.options["targets"] == "soft")
    keys = [json.dumps(r.options, sort_keys=True) for r in runs]
    names = [r.name for r in runs]
    assert len(set(keys)) == len(keys) and len(set(names)) == len(names)
    assert "kmeans_k10" in names and "dp_T20_a5_warm-prior_rho0.5_soft_tau0.5" in names
    assert [r.name for r in sweep.plan(spec)] == names  # deterministic


def test_collapsing_follows_field_metadata_so_no_option_is_forgotten():
    """prior_scale (its predecessor prior_strength was once missing from a hand list) and the relabel rule's options collapse by metadata."""
    spec = {"base": {"dataset": "synthetic"},
            "grid": {"prior": ["kmeans", "dp"], "prior_scale": [0.3, 1.0], "relabel": ["fixed", "adaptive"],
                     "relabel_every": [1, 3], "relabel_max_gap": [2, 5]}}
    runs = sweep.plan(spec)
    km = [r.options for r in runs if r.options["prior"] == "kmeans"]
    assert len(km) == 2 + 2 and not any("prior_scale" in o for o in km)  # fixed x 2 E + adaptive x 2 gaps
    assert len(runs) == 3 * len(km)                                           # + DP x 2 strengths
    for o in (r.options for r in runs):
        assert ("relabel_every" in o) == (o["relabel"] == "fixed") != ("relabel_max_gap" in o)


def _fake_finished_run(out_dir: Path, name: str) -> None:
    """A run directory that report.summarize_run reads as finished (no training)."""
    d = out_dir / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    recs = [{"epoch": 0, "phase": "train", "round": 0, "nmi": 0.5, "epoch_seconds": 1.0, "cluster_seconds": 0.5},
            {"epoch": 1, "phase": "final", "round": 1, "nmi": 0.6, "nmi_prev": 0.7}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_interrupted_sweep_restarts_without_redoing_finished_runs(tmp_path):
    spec = {"base": {"dataset": "synthetic", "subset": 50}, "grid": {"seed": [0, 1, 2]}}
    calls = []

    def dies_after_first(name, args, out_dir):
        if calls:
            raise KeyboardInterrupt  # the sweep is stopped during its second run
        calls.append(name)
        _fake_finished_run(out_dir, name)
        return 0

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(spec, tmp_path, launcher=dies_after_first, progress=False, verbose=False)
    assert calls == ["s0"]
    mtime = (tmp_path / "s0" / "metrics.jsonl").stat().st_mtime_ns

    restarted = []

    def spy(name, args, out_dir):
        restarted.append(name)
        _fake_finished_run(out_dir, name)
        return 0

    rows = sweep.run_sweep(spec, tmp_path, launcher=spy, progress=False, verbose=False)
    assert restarted == ["s1", "s2"]
    assert (tmp_path / "s0" / "metrics.jsonl").stat().st_mtime_ns == mtime
    assert [r["finished"] for r in rows] == [True, True, True]
    sweep.run_sweep(spec, tmp_path, launcher=spy, progress=False, verbose=False)
    assert restarted == ["s1", "s2"]  # all finished: the launcher is not called at all


def test_real_run_resumes_and_finished_runs_are_untouched(tiny_sweep):
    """Losing a run's final record (killed at the end) redoes only that: other runs' files keep their mtimes."""
    victim = "dp_T20_warm-init_r1"
    metrics = tiny_sweep / victim / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["phase"] == "final"
    metrics.write_text("".join(lines[:-1]))
    others = {p: p.stat().st_mtime_ns for p in tiny_sweep.glob("*/metrics.jsonl") if p.parent.name != victim}
    launched = []

    def spy(name, args, out_dir):
        launched.append(name)
        assert "--resume" not in args  # run_inprocess adds it itself
        return sweep.run_inprocess(name, args, out_dir)

    rows = sweep.run_sweep("tiny", tiny_sweep, launcher=spy, progress=False, verbose=False)
    assert launched == [victim]
    assert {p: p.stat().st_mtime_ns for p in others} == others
    assert all(r["finished"] for r in rows)
    assert json.loads(metrics.read_text().splitlines()[-1])["phase"] == "final"


@pytest.mark.parametrize("text, named", [
    ("grid:\n  trunction: [10, 20]\n", "'trunction'"),
    ("gird:\n  prior: [dp]\n", "'gird'"),
    ("base:\n  epoch: 3\n", "'epoch'"),
    ("runs:\n  - {prior: dp, warmstart: init}\n", "'warmstart'"),
    ("grid:\n  prior: dp\n", "'prior'"),
    ("base:\n  out_dir: x\n", "'out_dir'"),
])
def test_bad_yaml_fails_naming_the_key(tmp_path, text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(sweep.SweepError, match=named):
        sweep.plan(path)
    assert sweep.main([str(path), "--out-dir", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_bad_value_fails_before_anything_runs(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base: {dataset: synthetic}\ngrid:\n  prior: [kmeans, dpp]\n")
    with pytest.raises(sweep.SweepError, match="dpp"):
        sweep.run_sweep(path, tmp_path / "out", launcher=lambda *a: pytest.fail("launched"), progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(sweep.SweepError, match="unknown sweep preset 'nope'.*tiny"):
        sweep.plan("nope")


def test_presets_plan_and_dry_run_writes_nothing(tmp_path, capsys):
    counts = {name: len(sweep.plan(name)) for name in sweep.list_presets()}
    assert {"tiny", "ablation_cpu", "truncation_alpha", "full_gpu"} <= set(counts)
    assert counts["truncation_alpha"] == 3 * 3 + 2
    assert sweep.main(["tiny", "--dry-run", "--out-dir", str(tmp_path / "dry")]) == 0
    out = capsys.readouterr().out
    assert all(r.name in out for r in sweep.plan("tiny"))
    assert not (tmp_path / "dry").exists()


def test_submitit_sweep_runs_jobs_and_resumes_only_the_unfinished_run(tmp_path):
    """--launcher submitit with submitit's local executor (one run.py subprocess per job, as on a Slurm node), then
    its debug executor for the resumed run."""
    pytest.importorskip("submitit")
    spec = {"base": {"dataset": "synthetic", "subset": 60, "eval_subset": 20, "width": 4, "epochs": 1,
                     "batch_size": 16, "prior": "kmeans", "k": 4, "pca_dim": 8, "figures": False, "threads": 1},
            "grid": {"seed": [0, 1]}}
    options = sweep.SubmititOptions(cluster="local", timeout_min=10)
    rows = sweep.run_sweep(spec, tmp_path, submitit=options, progress=False, verbose=False)
    assert [r["finished"] for r in rows] == [True, True]
    jobs = [json.loads(line) for line in (tmp_path / "submitit" / "jobs.jsonl").read_text().splitlines()]
    assert sorted(j["run"] for j in jobs) == ["s0", "s1"] and {j["cluster"] for j in jobs} == {"local"}
    assert not any("--resume" in j["command"] for j in jobs)

    metrics = tmp_path / "s1" / "metrics.jsonl"   # s1 lost its final record (its job was killed at the end)
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    finished = (tmp_path / "s0" / "metrics.jsonl").stat().st_mtime_ns
    # resumed through the debug executor (the job runs from this process: no submitit process to start)
    rows = sweep.run_sweep(spec, tmp_path, submitit=sweep.SubmititOptions(cluster="debug"), progress=False,
                           verbose=False)
    assert [r["finished"] for r in rows] == [True, True]
    jobs = [json.loads(line) for line in (tmp_path / "submitit" / "jobs.jsonl").read_text().splitlines()]
    assert len(jobs) == 3 and jobs[-1]["run"] == "s1" and "--resume" in jobs[-1]["command"]
    assert jobs[-1]["cluster"] == "debug"
    assert (tmp_path / "s0" / "metrics.jsonl").stat().st_mtime_ns == finished
