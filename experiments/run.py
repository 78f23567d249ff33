#!/usr/bin/env python
"""Train a ConvNet with DeepCluster, clustering with k-means or a variational DP-GMM.

    python experiments/run.py --prior dp --truncation 300
    python experiments/run.py --prior kmeans --k 100 --dataset fashion-mnist
    python experiments/run.py --preset quick            # the README's CPU demo
    python experiments/run.py --name my-run --resume    # continue an interrupted run
    torchrun --standalone --nproc-per-node 2 experiments/run.py --preset quick   # 2 processes (GPUs, or gloo on CPU)

All options: ``python experiments/run.py --help`` (generated from ``bayes_dc/config/schema.py`` by
``bayes_dc.config.cli``). The work is done by ``bayes_dc.loop.pipeline.run``.
"""
import json
import os
import sys

# torch and faiss each bring an OpenMP runtime; with both pools spinning while idle, a small CPU run on a busy
# 2-core machine ran 5-8x slower (48 s vs 7 s). Sleeping idle threads cost nothing measurable on large batches.
# Set before torch loads (libgomp reads it once); an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bayes_dc.config.cli import CLIError, check_command_line, config_from_args  # noqa: E402
from bayes_dc.config.rules import OptionError, command_line_message  # noqa: E402


def main(argv=None) -> int:
    """Exit codes: 0 done; 2 bad options or a run that cannot start (nothing written); 1 the run diverged;
    130 stopped by Ctrl-C / SIGTERM (resumable with --resume)."""
    say = _say
    try:
        cfg = check_command_line(config_from_args(argv))
    except CLIError as err:
        say(f"error: {err}")
        return 2
    from bayes_dc.loop.pipeline import RunDiverged, RunInterrupted, run  # after parsing: --help and bad options need no torch

    try:
        final = run(cfg)
    except RunInterrupted as stop:
        say(f"interrupted: {stop}")
        return 130
    except KeyboardInterrupt:
        say("aborted: stopped at once (a second interrupt, or one before training began); the last checkpoint, "
            "if any, is kept: continue with --resume")
        return 130
    except RunDiverged as err:
        say(f"error: {err}")
        return 1
    except OptionError as err:   # the library names parameters (pca_dim); here they are flags (--pca-dim)
        say(f"error: {command_line_message(err)}")
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as err:
        say(f"error: {err}")
        return 2
    keys = ("nmi", "acc", "ari", "purity", "k_active", "k_used", "knn")
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({k: final.get(k) for k in keys if k in final}))
    return 0


def _say(message: str) -> None:
    """One line on stderr; under torchrun prefixed with the rank (an error may hit one rank only)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        message = f"[rank {os.environ.get('RANK', '?')}] {message}"
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
