#!/usr/bin/env python
"""Linear probe: logistic regression on the frozen trunk features of a run, test accuracy.

    python experiments/linear_probe.py runs/my-run                 # trunk from runs/my-run/last.pt
    python experiments/linear_probe.py runs/my-run --init          # the same architecture, random init

Trains on the run's training images (its dataset, subset and seed) and scores its eval split, with the
L2-normalised trunk features standardised (bayes_dc.evaluation.metrics.linear_probe). Writes ``linear_probe.json`` into the
run directory and prints it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

from bayes_dc.evaluation import metrics
from bayes_dc.config.schema import Config
from bayes_dc.loop.batches import BatchSource
from bayes_dc.loop.pipeline import derive_seed, load_split, resolve_device
from bayes_dc.rundir.runlog import CheckpointError, atomic_write_text, load_checkpoint
from bayes_dc.trained.load import trunk_architecture, trunk_state
from bayes_dc.trained.trunk_loader import build_trunk


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--init", action="store_true", help="probe the random-init trunk instead of the trained one")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 regularisation of the logistic regression")
    p.add_argument("--device", default="auto")
    p.add_argument("--allow-unverified", action="store_true",
                   help="accept a last.pt without a checksum manifest (runs saved before manifests existed)")
    args = p.parse_args(argv)
    ckpt_path = args.run_dir / "last.pt"
    try:  # verified (sha256 manifest) and weights_only=True: a shared run directory cannot run code here
        ckpt = load_checkpoint(ckpt_path, allow_unverified=args.allow_unverified)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if ckpt is None:
        print(f"error: {ckpt_path} not found; pass a run directory that has finished at least one epoch",
              file=sys.stderr)
        return 2
    cfg = Config.from_json(args.run_dir / "config.json")
    if cfg.data.eval_split == "none":
        print("error: this run has no eval split (--eval-split none); nothing to score", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    d = cfg.data
    train = load_split(cfg, "train", d.subset)   # streamed when the run streamed (--streaming, --memory-budget-gb)
    test = load_split(cfg, d.eval_split, d.eval_subset)
    torch.manual_seed(derive_seed(cfg.run.seed, "init"))  # the run's own initialisation
    # the loader of experiments/export.py's exports, so the probe scores the trunk that downstream code gets
    trunk = build_trunk(trunk_architecture(cfg, train.num_channels),
                        None if args.init else trunk_state(ckpt["model"])).to(device)
    mean, std = train.mean_std()
    scratch = Path(cfg.run.scratch_dir) if cfg.run.scratch_dir else args.run_dir / "scratch"
    feats = []
    for split, ds in (("train", train), ("test", test)):   # a streamed set's features pass through scratch files
        source = BatchSource(ds, device, scratch=scratch, tag=f"probe-{split}")
        raw = source.features(trunk, mean, std, batch_size=cfg.features.extract_batch)
        feats.append(F.normalize(raw.to(device, torch.float32), dim=1).cpu())
        source.remove_features()
    acc = metrics.linear_probe(feats[0], train.labels, feats[1], test.labels, C=args.C, seed=cfg.run.seed)
    result = {"linear_probe_acc": acc, "trunk": "random-init" if args.init else f"epoch {ckpt['state']['epoch']}",
              "train_images": len(train), "test_images": len(test), "C": args.C}
    name = "linear_probe_init.json" if args.init else "linear_probe.json"
    atomic_write_text(args.run_dir / name, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
