"""Collect run directories into one small results file (per run: name, config, metrics records; no checkpoints).

The ablation notebooks read such a file by default (experiments/notebooks/results/), so they can be committed
executed and re-run without the run directories:

    python experiments/collect_results.py bench_out/grid72/*-s0 bench_out/grid72-T100/*-s0 \
        --out experiments/notebooks/results/grid.jsonl

Arguments are run directories (those holding config.json) or folders above them, searched for run directories.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bayes_dc.evaluation.report import write_results


def run_dirs_under(paths: list[Path]) -> list[Path]:
    """Each path that is a run directory, else the run directories below it (in path order), without repeats."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise SystemExit(f"error: {path} is not a directory; pass run directories or folders holding them")
        below = [path] if (path / "config.json").exists() else sorted(c.parent for c in path.rglob("config.json"))
        if not below:
            raise SystemExit(f"error: no run directory (with config.json) under {path}")
        found += [d for d in below if d not in found]
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories, or folders holding them")
    parser.add_argument("--out", type=Path, required=True, help="results file to write (JSON lines)")
    args = parser.parse_args(argv)
    n = write_results(run_dirs_under(args.run_dirs), args.out)
    print(f"{n} runs -> {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
