"""Summaries of run directories (metrics.jsonl) for benchmark tables, sweeps and notebooks.

Reads files only; imports no training code, so it is safe to use on run directories copied elsewhere.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bayes_dc.rundir.jsonl import read_jsonl

# Options that do not change what a run measures (where it ran, how it reported) and the seed: runs that differ
# only in these are repeats of one experiment (notebook ablations, paper-figure groups of seeds).
NOT_COMPARED = frozenset({"name", "out_dir", "resume", "progress", "figures", "tensorboard", "threads", "device",
                          "knn_every", "extract_batch", "data_root", "download", "seed"})


def read_records(run_dir: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (one per epoch, plus the final one); ``[]`` if there are none."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def summarize_run(run_dir: str | Path, stability_window: int = 5) -> dict | None:
    """:func:`summarize_records` of a run directory's ``metrics.jsonl``."""
    return summarize_records(read_records(run_dir), stability_window)


def summarize_records(recs: list[dict], stability_window: int = 5) -> dict | None:
    """Headline numbers of one run's metrics records, or None if it has not finished an epoch.

    Keys: epochs_done, finished, nmi/acc/ari/purity/k_active/k_used/k_eff of the last clustering (the final
    evaluation when the run finished), nmi0/acc0/knn0 of round 0 (the random-init trunk), nmi_prev (mean
    NMI(t, t-1) over the last ``stability_window`` rounds), knn (last kNN accuracy), epoch_s (median seconds
    per epoch), cluster_share (median share of an epoch spent clustering, over relabel epochs),
    relabels (number of clusterings during training), nmi_curve / k_curve (per round).
    """
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


def load_runs(source: str | Path) -> list[dict]:
    """Every run that finished an epoch, as a dict: ``name``, ``dir``, ``opts`` (its config, flat:
    ``{"truncation": 300, ...}``), ``records`` (metrics.jsonl) and :func:`summarize_records`'s numbers.

    ``source`` is a directory (every run directory under it, in path order) or a results file written by
    :func:`write_results` (its runs in file order; ``dir`` is where the run was when it was collected).
    """
    source = Path(source)
    if source.is_file():
        stored = read_jsonl(source)
    else:
        stored = [collect_run(m.parent) for m in sorted(source.rglob("metrics.jsonl"))
                  if (m.parent / "config.json").exists()]
    runs = []
    for run in stored:
        summary = summarize_records(run["records"])
        if summary is None:
            continue
        opts = {k: v for section in run["config"].values() for k, v in section.items()}
        runs.append({"name": run["name"], "dir": Path(run["dir"]), "opts": opts, "records": run["records"],
                     **summary})
    return runs


def collect_run(run_dir: str | Path) -> dict:
    """What the reports need of one run directory, without its checkpoints: ``name``, ``dir``, ``config``
    (config.json, by section, its paths cut to folder names) and ``records`` (metrics.jsonl); ``dir`` is
    ``<parent folder>/<name>``."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json): pass the directories "
                                f"that experiments/run.py or bench_*.py made")
    # The file is committed and shared: it names folders (the run's, the data's, where runs went), never a
    # machine's paths (the data folder's name still tells an image folder apart, e.g. cifar10).
    config = json.loads(config_path.read_text())
    for section, key in (("run", "out_dir"), ("data", "data_root"), ("run", "scratch_dir")):
        if config.get(section, {}).get(key):
            config[section][key] = Path(config[section][key]).name
    return {"name": run_dir.name, "dir": f"{run_dir.resolve().parent.name}/{run_dir.name}", "config": config,
            "records": read_records(run_dir)}


def write_results(run_dirs: list[str | Path], out: str | Path) -> int:
    """Store :func:`collect_run` of each run directory as one line of ``out`` (JSON lines, replacing the file),
    a small file that :func:`load_runs` reads like the directories; returns the number of runs stored."""
    lines = [json.dumps(collect_run(d)) for d in run_dirs]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(line + "\n" for line in lines))
    return len(lines)


def family(runs: list[dict], vary: list[str]) -> list[dict]:
    """The largest set of :func:`load_runs` runs that differ only in the options ``vary`` (and in
    ``NOT_COMPARED``): an ablation of ``vary``, sorted by those options' values.

    Options that only some runs record are not compared either: they were added to the code after the other runs
    were made (e.g. a results file collected over several versions), which ran without them."""
    common = set.intersection(*(set(r["opts"]) for r in runs)) if runs else set()
    groups: dict[str, list[dict]] = {}
    for r in runs:
        key = json.dumps({k: v for k, v in r["opts"].items() if k in common and k not in NOT_COMPARED
                          and k not in vary}, sort_keys=True)
        groups.setdefault(key, []).append(r)
    best = max(groups.values(), key=lambda g: len({json.dumps([r["opts"].get(k) for k in vary]) for r in g}),
               default=[])
    return sorted(best, key=lambda r: json.dumps([r["opts"].get(k) for k in vary]))


def curve(run: dict, key: str) -> tuple:
    """(epochs, values) of ``key`` over a :func:`load_runs` run's records that carry a clustering."""
    pts = [(r["epoch"], r[key]) for r in run["records"] if "round" in r and r.get(key) is not None]
    return tuple(zip(*pts)) if pts else ((), ())


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
