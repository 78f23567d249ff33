#!/usr/bin/env python
"""Export a finished run's trunk for code that does not use bayes_dc (a linear probe, transfer).

    python experiments/export.py runs/my-run --out exports/my-run

Writes into the folder ``--out`` (created; refused if it already holds an export, unless ``--force``):
``trunk.pt`` (the trunk's state dict, tensors only), ``trunk.json`` (architecture, input size and normalisation,
sha256 of trunk.pt, the run it came from), and ``models.py`` + ``trunk_loader.py``, which need only torch::

    import sys; sys.path.insert(0, "exports/my-run")
    from trunk_loader import load_trunk
    trunk, preprocess = load_trunk("exports/my-run")
    features = trunk(preprocess(images_uint8))      # (B, C, S, S) uint8 -> (B, feature_dim)

Exit codes: 0 written; 2 bad input (a run without final.pt, a damaged checkpoint, an existing export), one line.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import torch

from bayes_dc.models import nets
from bayes_dc.trained import trunk_loader
from bayes_dc.rundir.runlog import atomic_write_bytes, atomic_write_text
from bayes_dc.trained.load import load_run, trunk_architecture, trunk_state


def export(run_dir: Path, out: Path, force: bool = False) -> dict:
    """Write the export of ``run_dir`` into ``out``; return trunk.json's content."""
    if (out / "trunk.json").exists() and not force:
        raise ValueError(f"{out} already holds an export; pass --force to replace it, or choose another --out")
    run = load_run(run_dir)
    buffer = io.BytesIO()
    torch.save(trunk_state(run.model.state_dict()), buffer)
    weights = buffer.getvalue()
    meta = {"format": trunk_loader.TRUNK_FORMAT,
            "architecture": {**trunk_architecture(run.config, run.channels), "feature_dim": run.trunk.feature_dim},
            "input": {"image_size": run.image_size, "channels": run.channels, "mean": run.mean.tolist(),
                      "std": run.std.tolist(), "scale": "images / 255, then (x - mean) / std per channel",
                      "view": "centred square, resized bilinear with antialias"},
            "sha256": hashlib.sha256(weights).hexdigest(), "source_run": str(run_dir.resolve())}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "trunk.pt", weights)
    # the same files bayes_dc runs, so the export cannot drift
    for source, name in ((nets.__file__, "models.py"), (trunk_loader.__file__, "trunk_loader.py")):
        shutil.copyfile(source, out / name)
    atomic_write_text(out / "trunk.json", json.dumps(meta, indent=2) + "\n")   # last: its presence marks a whole export
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished run directory (holding final.pt)")
    p.add_argument("--out", type=Path, required=True, help="folder to write the export into")
    p.add_argument("--force", action="store_true", help="replace an export already in --out")
    args = p.parse_args(argv)
    try:
        meta = export(args.run_dir, args.out, args.force)
    except (ValueError, RuntimeError, OSError) as err:   # RunLoadError, CheckpointError, a folder we cannot write
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), **meta["architecture"], "image_size": meta["input"]["image_size"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
