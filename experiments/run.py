#!/usr/bin/env python
"""Train a ConvNet with DeepCluster, clustering with k-means or a variational DP-GMM.

    python experiments/run.py --prior dp --truncation 300
    python experiments/run.py --prior kmeans --k 100 --dataset fashion-mnist
    python experiments/run.py --preset quick            # the README's CPU demo
    python experiments/run.py --name my-run --resume    # continue an interrupted run

All options: ``python experiments/run.py --help`` (generated from ``bayes_dc/config.py`` by
``bayes_dc.cli``). The work is done by ``bayes_dc.pipeline.run``.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bayes_dc.cli import CLIError, config_from_args  # noqa: E402


def main(argv=None) -> int:
    try:
        cfg = config_from_args(argv)
    except CLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from bayes_dc.pipeline import run  # after parsing: --help and bad options need no torch

    try:
        final = run(cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    keys = ("nmi", "acc", "ari", "purity", "k_active", "k_used", "knn")
    print(json.dumps({k: final.get(k) for k in keys if k in final}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
