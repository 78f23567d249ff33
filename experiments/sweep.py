#!/usr/bin/env python
"""Run a grid of ``experiments/run.py`` configurations, resumably, and tabulate them.

    python experiments/sweep.py tiny                          # preset experiments/configs/sweeps/tiny.yaml
    python experiments/sweep.py ablation_cpu --jobs 2          # two runs at a time (subprocesses)
    python experiments/sweep.py my_grid.yaml --out-dir runs/sweeps/mine --dry-run   # list the runs only
    python experiments/sweep.py full_gpu --launcher submitit --slurm-partition gpu --gpus-per-node 1 --timeout-min 600

GRID is a preset name (``experiments/configs/sweeps/NAME.yaml``) or a YAML file::

    description: one line saying what the sweep is for          # optional
    base:                       # run.py options for every run (names as in run.py, '_' or '-')
      dataset: fashion-mnist
      epochs: 6
    grid:                       # option -> list of values; the runs are the cartesian product
      prior: [kmeans, dp]
      warm_start: [none, init]
      seed: [0, 1, 2]
    runs:                       # optional explicit runs (each merged over base), added to the grid's
      - {prior: kmeans, k: 100}

Combinations that make no sense are collapsed, so no run is made twice: every option that cannot change a
run is dropped, as its field's metadata in ``bayes_dc/config/schema.py`` says (``bayes_dc.config.schema.unused_options``):
k-means runs drop every DP option (truncation, alpha, warm_start, ...) and get ``targets: hard`` and
``head: reset``; DP runs drop ``k``; ``prior_decay`` only counts with ``warm_start: prior``, ``sharpen`` only
with soft / multilabel targets, ``relabel_every`` only with ``relabel: fixed``, and so on.
Each run is named from the options that vary across the sweep (``dp_T100_a1_warm-init_s0``) and lives in
``OUT_DIR/NAME/`` (default ``runs/sweeps/GRID``). Finished runs are skipped without starting anything,
interrupted ones resumed (``--resume``). With ``--jobs 1`` runs go one after another in this process;
with ``--jobs N`` they run as N parallel ``run.py`` subprocesses (``experiments/benchlib.launch``, logs in
``OUT_DIR/NAME.log``); with ``--launcher submitit`` each is a job of a cluster (Slurm through submitit, with
``--slurm-partition``, ``--gpus-per-node``, ``--timeout-min`` ...; a run on several GPUs starts under torchrun),
and the sweep waits for them. Finished runs are skipped and interrupted ones resumed either way. At the end ``summary.csv`` and ``summary.md`` (one row per run: its varying options,
NMI, ACC, ARI, K_active, kNN accuracy, NMI(t, t-1), seconds per epoch, clustering share, finished) are
written to OUT_DIR and printed; ``sweep.json`` records the plan.

Python API: :func:`plan` (GRID -> runs), :func:`run_sweep` (plan, run, summarise; returns the rows).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import io
import itertools
import json
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent

from benchlib import launch, run_argv, run_command  # noqa: E402
from bayes_dc.config.cli import to_args  # noqa: E402
from bayes_dc.config.schema import OPTIONS, Config, unused_options  # noqa: E402
from bayes_dc.evaluation.report import fmt, markdown_table, mean_spread, summarize_run  # noqa: E402

PRESET_DIR = ROOT / "experiments" / "configs" / "sweeps"
TOP_KEYS = ("description", "base", "grid", "runs")

# Every config field (bayes_dc.config.schema.OPTIONS) is a run.py option; the sweep owns where runs go and whether
# they resume.
_DEFAULTS = Config()
SWEEP_OWNED = {"name", "out_dir", "resume"}
# Forced for k-means (pipeline.validate refuses anything else) and left out of k-means run names.
KMEANS_FORCED = {"targets": "hard", "head": "reset"}

# Run names: options in this order first, then in order of appearance; seed last.
NAME_ORDER = ("dataset", "prior", "k", "truncation", "alpha", "warm_start", "prior_decay", "targets", "sharpen",
              "relabel", "relabel_every", "head")
NAME_PREFIX = {"prior": "", "dataset": "", "targets": "", "inference": "", "covariance": "", "k": "k",
               "truncation": "T", "alpha": "a", "warm_start": "warm-", "prior_decay": "rho", "sharpen": "tau",
               "relabel": "relabel-", "relabel_every": "r", "head": "head-", "seed": "s", "epochs": "e",
               "subset": "n", "width": "w", "pca_dim": "pca"}

METRICS = [("nmi", "NMI", 3), ("acc", "ACC", 3), ("ari", "ARI", 3), ("k_active", "K_active", 1),
           ("knn", "kNN acc", 3), ("nmi_prev", "NMI(t,t-1)", 3), ("epoch_s", "s / epoch", 2),
           ("cluster_share", "clustering share", 2), ("epochs_done", "epochs", 0), ("finished", "finished", 0)]


class SweepError(ValueError):
    """A sweep file that cannot be run as written (the message names the key and the fix)."""


@dataclasses.dataclass
class Run:
    name: str
    options: dict[str, Any]      # collapsed run.py options (underscored names)

    @property
    def args(self) -> list[str]:
        return to_args(self.options)  # bools as --x / --no-x, pairs as two values, null as None


# ---- reading and expanding a grid ------------------------------------------------------------------------
def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_grid(grid: str | Path) -> Path:
    """A preset name or a YAML path -> the YAML path (error lists the presets)."""
    path = Path(grid)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise SweepError(f"sweep file {path} not found")
        return path
    preset = PRESET_DIR / f"{grid}.yaml"
    if not preset.exists():
        raise SweepError(f"unknown sweep preset {str(grid)!r}; choose one of {list_presets()} or give a YAML path")
    return preset


def load_grid(grid: str | Path | dict) -> dict:
    """Read and check a sweep spec (preset name, YAML path or an already-parsed dict)."""
    if isinstance(grid, dict):
        spec, where = grid, "sweep spec"
    else:
        path = resolve_grid(grid)
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SweepError(f"{path}: not valid YAML: {err}") from None
        where = str(path)
    if not isinstance(spec, dict):
        raise SweepError(f"{where}: expected a mapping with keys {list(TOP_KEYS)}, got {type(spec).__name__}")
    for key in spec:
        if key not in TOP_KEYS:
            raise SweepError(f"{where}: unknown top-level key {key!r}; valid keys: {list(TOP_KEYS)}"
                             + _did_you_mean(key, TOP_KEYS))
    base = _check_options(spec.get("base") or {}, f"{where}: base")
    grid_opts = _check_options(spec.get("grid") or {}, f"{where}: grid")
    for key, values in grid_opts.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: grid option {key!r} must be a non-empty list of values, got {values!r} "
                             f"(put single values under base:)")
    runs = spec.get("runs") or []
    if not isinstance(runs, list):
        raise SweepError(f"{where}: runs must be a list of option mappings, got {type(runs).__name__}")
    runs = [_check_options(r, f"{where}: runs[{i}]") for i, r in enumerate(runs)]
    if not grid_opts and not runs and not base:
        raise SweepError(f"{where}: nothing to run (give base:, grid: and/or runs:)")
    return {"description": spec.get("description", ""), "base": base, "grid": grid_opts, "runs": runs}


def _did_you_mean(key: str, valid) -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_options(options: Any, where: str) -> dict:
    if not isinstance(options, dict):
        raise SweepError(f"{where}: expected a mapping of run.py options, got {type(options).__name__}")
    out = {}
    for key, value in options.items():
        name = str(key).replace("-", "_")
        if name in SWEEP_OWNED:
            raise SweepError(f"{where}: option {key!r} is set by the sweep itself (use --out-dir); remove it")
        if name not in OPTIONS:
            raise SweepError(f"{where}: unknown option {key!r}" + _did_you_mean(name, OPTIONS)
                             + "; every run.py option is allowed (see python experiments/run.py --help)")
        out[name] = value
    return out


def collapse(options: dict) -> dict:
    """Drop options that cannot matter for this run (see module docstring); returns a new dict."""
    out = dict(options)
    if out.get("prior", _DEFAULTS.cluster.prior) == "kmeans":
        out.update(KMEANS_FORCED)
    for key in unused_options(out):
        del out[key]
    return out


def expand(spec: dict) -> list[dict]:
    """The collapsed, de-duplicated option dicts of a checked spec, grid runs first, in grid order."""
    keys = list(spec["grid"])
    combos = [dict(zip(keys, values)) for values in itertools.product(*(spec["grid"][k] for k in keys))]
    if not keys and spec["runs"]:  # product() of nothing is one empty combination: only base alone
        combos = []
    seen, out = set(), []
    for extra in combos + spec["runs"]:
        options = collapse({**spec["base"], **extra})
        key = json.dumps(options, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(options)
    return out


def _value_str(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        value = "x".join(_value_str(v) for v in value)
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in str(value))


def _name_part(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return key.replace("_", "-") if value else "no-" + key.replace("_", "-")
    prefix = NAME_PREFIX.get(key, key.replace("_", "-") + "-")
    return prefix + _value_str(value)


def varying_keys(option_dicts: list[dict]) -> list[str]:
    """Options whose value (or presence) differs between runs, in name order."""
    seen = list(dict.fromkeys(k for o in option_dicts for k in o))
    vary = [k for k in seen if len({json.dumps(o.get(k, "<unset>"), default=str) for o in option_dicts}) > 1]
    ordered = [k for k in NAME_ORDER if k in vary] + [k for k in vary if k not in NAME_ORDER and k != "seed"]
    return ordered + (["seed"] if "seed" in vary else [])


def run_name(options: dict, keys: list[str]) -> str:
    kmeans = options.get("prior", _DEFAULTS.cluster.prior) == "kmeans"
    parts = [_name_part(k, options[k]) for k in keys
             if k in options and not (kmeans and k in KMEANS_FORCED)]
    return "_".join(parts) or "run"


def plan(grid: str | Path | dict) -> list[Run]:
    """GRID (preset name, YAML path or dict) -> the runs, each with a unique readable name."""
    spec = load_grid(grid)
    option_dicts = expand(spec)
    keys = varying_keys(option_dicts)
    runs = [Run(run_name(o, keys), o) for o in option_dicts]
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(f"two different runs would share the name(s) {dupes}; make their options differ in a "
                         "way that survives naming (values with the same letters/digits)")
    return runs


def check_runs(runs: list[Run], out_dir: Path) -> None:
    """Parse and validate every run's config before anything starts (bad values fail here, by run name)."""
    from bayes_dc.config.cli import config_from_args
    from bayes_dc.loop.pipeline import validate

    for run in runs:
        try:  # CLIError (a value the option does not take) and validate's errors are both ValueErrors
            validate(config_from_args(run_argv(run.name, run.args, out_dir)))
        except ValueError as err:
            raise SweepError(f"run {run.name}: {err}") from None


# ---- launching -----------------------------------------------------------------------------------------
Launcher = Callable[[str, list[str], Path], int]


def run_inprocess(name: str, args: list[str], out_dir: Path) -> int:
    """Run (or resume) one run in this process; returns 0, or 1 after writing the error to OUT_DIR/NAME.log."""
    from bayes_dc.config.cli import config_from_args
    from bayes_dc.loop.pipeline import run

    argv = run_argv(name, args, out_dir)
    try:
        run(config_from_args(argv))
        return 0
    except Exception as err:  # one broken run must not stop the sweep; KeyboardInterrupt does
        with open(out_dir / f"{name}.log", "a") as log:
            log.write(f"[{time.strftime('%H:%M:%S')}] {' '.join(argv)}\n{traceback.format_exc()}\n")
        print(f"run {name} failed: {err} (traceback in {out_dir / (name + '.log')})", file=sys.stderr)
        return 1


def is_finished(run_dir: Path) -> bool:
    summary = summarize_run(run_dir)
    return bool(summary and summary["finished"])


def _launch_parallel(todo: list[Run], out_dir: Path, jobs: int, bar) -> dict[str, int]:
    """benchlib.launch in a thread; the bar advances as runs write their final record."""
    codes: dict[str, int] = {}
    thread = threading.Thread(target=lambda: codes.update(launch([(r.name, r.args) for r in todo], out_dir, jobs)),
                              daemon=True)
    thread.start()
    counted: set[str] = set()
    while thread.is_alive():
        thread.join(timeout=2)
        for r in todo:
            if r.name not in counted and (r.name in codes or is_finished(out_dir / r.name)):
                counted.add(r.name)
                bar.update(1)
    bar.update(len(todo) - len(counted))
    return codes


@dataclasses.dataclass
class SubmititOptions:
    """Where and how ``--launcher submitit`` runs each run.py as a job (submitit's AutoExecutor).

    ``cluster``: None picks what submitit finds (Slurm when ``sbatch`` exists, else its local executor);
    ``"slurm"``, ``"local"`` (one subprocess per job, at once) or ``"debug"`` (in this process, one after another)
    force one. ``nproc_per_node`` > 1 starts each run under ``torchrun --standalone`` with that many processes
    (default: ``gpus_per_node``, at least 1).
    """

    cluster: str | None = None
    partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 240
    nproc_per_node: int | None = None
    array_parallelism: int | None = None

    @property
    def processes(self) -> int:
        return self.nproc_per_node or max(self.gpus_per_node, 1)


def launch_submitit(todo: list[Run], out_dir: Path, options: SubmititOptions, say=print) -> dict[str, int]:
    """Submit one job per run (a Slurm job array when the cluster is Slurm), wait for them, return exit codes.

    Each job runs :func:`run_command` through ``submitit.helpers.CommandFunction`` from the repository root. Job
    logs live in ``OUT_DIR/submitit/``, and ``OUT_DIR/submitit/jobs.jsonl`` records which job ran which run with
    which command; a failed run's error goes to ``OUT_DIR/NAME.log`` as with the other launchers. A run stopped
    by its job's time limit (Slurm's SIGTERM: run.py checkpoints after the epoch) resumes when the sweep is run
    again.
    """
    import submitit

    from bayes_dc.rundir.jsonl import append_jsonl

    folder = out_dir / "submitit"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=options.cluster)
    params: dict[str, Any] = {"name": f"sweep-{out_dir.name}", "timeout_min": options.timeout_min,
                              "gpus_per_node": options.gpus_per_node, "tasks_per_node": 1}
    params.update({k: v for k, v in (("cpus_per_task", options.cpus_per_task), ("mem_gb", options.mem_gb),
                                     ("slurm_partition", options.partition),
                                     ("slurm_array_parallelism", options.array_parallelism)) if v is not None})
    executor.update_parameters(**params)
    commands = {r.name: run_command(r.name, r.args, out_dir, options.processes) for r in todo}
    with executor.batch():
        jobs = {r.name: executor.submit(submitit.helpers.CommandFunction(commands[r.name], cwd=ROOT)) for r in todo}
    for name, job in jobs.items():
        append_jsonl(folder / "jobs.jsonl", {"run": name, "job_id": str(job.job_id), "cluster": executor.cluster,
                                             "command": commands[name]})
    say(f"submitted {len(jobs)} job(s) to {executor.cluster} (logs in {folder})")
    codes = {}
    for name, job in jobs.items():
        try:
            job.result()
            codes[name] = 0
        except Exception as err:   # the run failed, or its job was killed; the next sweep resumes it
            codes[name] = 1
            with open(out_dir / f"{name}.log", "a") as log:
                log.write(f"[{time.strftime('%H:%M:%S')}] job {job.job_id}: {' '.join(commands[name])}\n{err}\n")
    return codes


def run_sweep(grid: str | Path | dict, out_dir: str | Path | None = None, *, jobs: int = 1, dry_run: bool = False,
              launcher: Launcher | None = None, submitit: SubmititOptions | None = None, progress: bool = True,
              verbose: bool = True) -> list[dict]:
    """Plan GRID, run what is not finished into OUT_DIR, write and return the summary rows.

    ``launcher(name, run.py args, out_dir) -> exit code`` runs one run (default: :func:`run_inprocess`;
    ``jobs > 1`` uses parallel run.py subprocesses instead; ``submitit`` submits one job per run through
    :func:`launch_submitit`). Finished runs are never passed to any of them.
    """
    from tqdm import tqdm  # plain text bar (tqdm.auto warns inside notebooks without ipywidgets)

    runs = plan(grid)
    if out_dir is None:
        stem = grid.get("name", "sweep") if isinstance(grid, dict) else Path(str(grid)).stem
        out_dir = ROOT / "runs" / "sweeps" / stem
    out_dir = Path(out_dir).resolve()  # one spelling, so --resume always sees the same run.out_dir
    done = {r.name for r in runs if is_finished(out_dir / r.name)}
    todo = [r for r in runs if r.name not in done]
    say = print if verbose else (lambda *a, **k: None)
    if dry_run:
        say(f"{len(runs)} runs in {out_dir} ({len(done)} finished):")
        for r in runs:
            state = "finished" if r.name in done else ("resume" if (out_dir / r.name / "config.json").exists()
                                                        else "new")
            say(f"  {r.name:40s} [{state}] {' '.join(r.args)}")
        return [{"name": r.name, **r.options} for r in runs]
    if todo:  # (parsing imports the training code: not needed when every run is finished)
        check_runs(todo, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = load_grid(grid)
    (out_dir / "sweep.json").write_text(json.dumps(
        {"grid": str(grid) if not isinstance(grid, dict) else "dict", "spec": spec,
         "runs": [{"name": r.name, "options": r.options} for r in runs]}, indent=2, default=str) + "\n")
    if done:
        say(f"skipping {len(done)} finished run(s): {', '.join(sorted(done))}")
    codes: dict[str, int] = {}
    bar = tqdm(total=len(runs), initial=len(done), desc="sweep", unit="run", disable=not progress)
    try:
        if submitit is not None and launcher is None:
            if todo:
                codes = launch_submitit(todo, out_dir, submitit, say)
            bar.update(len(todo))
        elif jobs > 1 and launcher is None:
            codes = _launch_parallel(todo, out_dir, jobs, bar)
        else:
            launcher = launcher or run_inprocess
            for r in todo:
                bar.set_postfix_str(r.name)
                codes[r.name] = launcher(r.name, r.args, out_dir)
                bar.update(1)
    finally:
        bar.close()
    failed = sorted(n for n, c in codes.items() if c != 0)
    if failed:
        say(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their .log in {out_dir}); rerun to resume")
    rows = summarize(out_dir, runs)
    text = write_summary(out_dir, rows, varying_keys([r.options for r in runs]))
    say(text)
    return rows


# ---- summary -------------------------------------------------------------------------------------------
def summarize(out_dir: str | Path, runs: list[Run]) -> list[dict]:
    """One row per run: name, its options, and report.summarize_run's headline numbers (None if missing)."""
    rows = []
    for r in runs:
        s = summarize_run(Path(out_dir) / r.name) or {"epochs_done": 0, "finished": False}
        rows.append({"name": r.name, **r.options, **{k: s.get(k) for k, _, _ in METRICS}})
    return rows


def write_summary(out_dir: str | Path, rows: list[dict], option_keys: list[str]) -> str:
    """Write summary.csv and summary.md into OUT_DIR; return the Markdown text."""
    out_dir = Path(out_dir)
    columns = ["name", *option_keys, *(k for k, _, _ in METRICS)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    (out_dir / "summary.csv").write_text(buf.getvalue())

    md_cols = [("name", "run", 0)] + [(k, k, 3) for k in option_keys] + METRICS
    text = f"Sweep {out_dir.name}: {len(rows)} runs, {sum(bool(r['finished']) for r in rows)} finished\n\n"
    text += markdown_table(rows, md_cols) + "\n"
    if "seed" in option_keys:  # the same configuration over several seeds: mean ± std
        text += "\nMean ± std over seeds:\n\n" + markdown_table(_over_seeds(rows, option_keys),
                                                                  [(k, k, 3) for k in option_keys if k != "seed"]
                                                                  + [("seeds", "seeds", 0)]
                                                                  + [(k, h, 0) for k, h, _ in METRICS[:8]]) + "\n"
    (out_dir / "summary.md").write_text(text)
    return text


def _over_seeds(rows: list[dict], option_keys: list[str]) -> list[dict]:
    keys = [k for k in option_keys if k != "seed"]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(json.dumps([row.get(k) for k in keys], default=str), []).append(row)
    out = []
    for members in groups.values():
        agg = {k: members[0].get(k) for k in keys}
        agg["seeds"] = sum(1 for m in members if m["nmi"] is not None)
        for k, _, digits in METRICS[:8]:
            mean, spread = mean_spread([m.get(k) for m in members])
            agg[k] = fmt(mean, digits) + (f" ± {fmt(spread, digits)}" if spread is not None else "")
        out.append(agg)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", help=f"preset name ({', '.join(list_presets())}) or a YAML file")
    p.add_argument("--out-dir", default=None, help="sweep directory (default runs/sweeps/GRID)")
    p.add_argument("--jobs", type=int, default=1,
                   help="local: parallel runs (subprocesses) when > 1; submitit: the most array jobs at once")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their options; run nothing")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--launcher", choices=["local", "submitit"], default="local",
                   help="local: in this process or --jobs subprocesses; submitit: one job per run (Slurm, or "
                        "submitit's local executor where there is no Slurm)")
    group = p.add_argument_group("submitit (--launcher submitit)")
    group.add_argument("--cluster", choices=["slurm", "local", "debug"], default=None,
                       help="submitit executor; default: Slurm if available, else local")
    group.add_argument("--slurm-partition", default=None, help="Slurm partition of the jobs")
    group.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per job")
    group.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per job")
    group.add_argument("--mem-gb", type=float, default=None, help="memory per job, GB")
    group.add_argument("--timeout-min", type=int, default=240,
                       help="time limit per job, minutes (a run stopped by it resumes at the next sweep)")
    group.add_argument("--nproc-per-node", type=int, default=None,
                       help="processes per run (torchrun); default --gpus-per-node, at least 1")
    args = p.parse_args(argv)
    options = None
    if args.launcher == "submitit":
        options = SubmititOptions(cluster=args.cluster, partition=args.slurm_partition,
                                  gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                                  mem_gb=args.mem_gb, timeout_min=args.timeout_min,
                                  nproc_per_node=args.nproc_per_node,
                                  array_parallelism=args.jobs if args.jobs > 1 else None)
    try:
        rows = run_sweep(args.grid, args.out_dir, jobs=args.jobs, dry_run=args.dry_run, submitit=options,
                         progress=args.progress)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:   # a run stopped at its checkpoint (pipeline.RunInterrupted), or at once
        print(f"interrupted: {stop or 'stopped at once'}; run the same sweep command again to resume", file=sys.stderr)
        return 130
    return 0 if args.dry_run or all(r["finished"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
