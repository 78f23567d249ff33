#!/usr/bin/env python
"""Export a finished run's trunk for code that does not use bayes_dc (a linear probe, transfer).

    python experiments/export.py runs/my-run --out exports/my-run

Writes into the folder ``--out`` (created; refused if it holds anything, unless ``--force``): ``trunk.pt`` (the
trunk's state dict, tensors only), ``trunk.json`` (architecture, input size and normalisation, sha256 of
trunk.pt, the name of the run it came from: no path of this machine), and ``models.py`` + ``trunk_loader.py``,
which need only torch::

    import sys; sys.path.insert(0, "exports/my-run")
    from trunk_loader import load_trunk
    trunk, preprocess = load_trunk("exports/my-run")
    features = trunk(preprocess(images_uint8))      # (B, C, S, S) uint8 -> (B, feature_dim)

Exit codes: 0 written; 2 bad input (a run without final.pt, a damaged checkpoint, a non-empty --out) or an --out
that cannot be written (a full disk, a read-only folder), one line.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import bayes_dc  # noqa: E402,F401  first: sets the OpenMP thread settings before torch loads (runtime/threads.py)
import torch  # noqa: E402

from bayes_dc.models import nets  # noqa: E402
from bayes_dc.trained import trunk_loader  # noqa: E402
from bayes_dc.rundir.atomic import atomic_write_bytes, atomic_write_text, writing  # noqa: E402
from bayes_dc.trained.load import load_run, trunk_architecture, trunk_state  # noqa: E402


def export(run_dir: Path, out: Path, force: bool = False) -> dict:
    """Write the export of ``run_dir`` into ``out``; return trunk.json's content.

    Raises:
        ValueError: ``out`` is a file, or a folder that holds anything and ``force`` is not set (an export writes
            four files there and must not replace what a user keeps in it).
        WriteError: ``out`` cannot be written (one line naming the file and the cause).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} is not empty; choose an empty or new folder, or pass --force to write the "
                         f"export's four files into it anyway")
    run = load_run(run_dir)
    buffer = io.BytesIO()
    torch.save(trunk_state(run.model.state_dict()), buffer)
    weights = buffer.getvalue()
    meta = {"format": trunk_loader.TRUNK_FORMAT,
            "architecture": {**trunk_architecture(run.config, run.channels), "feature_dim": run.trunk.feature_dim},
            "input": {"image_size": run.image_size, "channels": run.channels, "mean": run.mean.tolist(),
                      "std": run.std.tolist(), "scale": "images / 255, then (x - mean) / std per channel",
                      "view": "centred square, resized bilinear with antialias"},
            # the run's name, not its path: an export is shared, and a path says who made it where
            "sha256": hashlib.sha256(weights).hexdigest(), "source_run": run_dir.resolve().name}
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "trunk.pt", weights)
    # the same files bayes_dc runs, so the export cannot drift
    for source, name in ((nets.__file__, "models.py"), (trunk_loader.__file__, "trunk_loader.py")):
        atomic_write_bytes(out / name, Path(source).read_bytes())
    atomic_write_text(out / "trunk.json", json.dumps(meta, indent=2) + "\n")   # last: its presence marks a whole export
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished run directory (holding final.pt)")
    p.add_argument("--out", type=Path, required=True, help="folder to write the export into")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (replacing an export there)")
    args = p.parse_args(argv)
    try:
        meta = export(args.run_dir, args.out, args.force)
    except (ValueError, RuntimeError, OSError) as err:   # RunLoadError, CheckpointError, WriteError
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), **meta["architecture"], "image_size": meta["input"]["image_size"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
