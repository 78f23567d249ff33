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

# bayes_dc first, before anything loads torch: its import sets the OpenMP thread settings (passive waiting, threads
# matched to this process's CPUs) unless the environment sets them (bayes_dc/runtime/threads.py).
from bayes_dc.config.cli import CLIError, check_command_line, config_from_args  # noqa: E402
from bayes_dc.config.rules import OptionError, command_line_message  # noqa: E402


def main(argv=None) -> int:
    """Exit codes: 0 done; 2 bad options, a run that cannot start (nothing written) or a run directory that cannot
    be written (a full disk: the last complete checkpoint is kept, resumable with --resume); 1 the run diverged;
    130 stopped by Ctrl-C / SIGTERM (resumable with --resume)."""
    say = _say
    try:
        cfg = check_command_line(config_from_args(argv))
    except CLIError as err:
        say(f"error: {err}")
        return 2
    from bayes_dc.loop.pipeline import RunDiverged, RunInterrupted, run  # after parsing: --help and bad options need no torch
    from bayes_dc.rundir.atomic import WriteError

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
    except WriteError as err:   # names the file, the cause and the fix; every write before it is complete
        say(f"error: {err}; the run's last complete checkpoint is kept: once fixed, continue the run with --resume")
        return 2
    except (ValueError, OSError, RuntimeError, ImportError) as err:
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
