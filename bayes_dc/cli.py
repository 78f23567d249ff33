"""Command line -> :class:`Config`. Every config field is an option (``--pca-dim``, ``--warm-start``, ...).

Precedence: defaults < ``--preset NAME`` (``experiments/configs/NAME.json``) or ``--config FILE`` < options
given on the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path

from .config import Config, merge

PRESET_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"

HELP = {
    "dataset": "dataset name (fashion-mnist, mnist, cifar10, stl10, imagefolder, digits, synthetic)",
    "data_root": "folder with the data (searched first); for imagefolder, the image folder",
    "subset": "use N training images (seeded subset)",
    "eval_split": "split for kNN / linear probe ('none' to skip)",
    "prior": "clustering backend: kmeans (DeepCluster baseline) or dp (DP-GMM)",
    "k": "number of k-means clusters",
    "truncation": "DP truncation T (upper bound on the number of clusters)",
    "inference": "DP inference engine: cavi (closed form, fast) or svi (Pyro)",
    "warm_start": "DP warm start between rounds: none | init | prior",
    "prior_decay": "rho in (0, 1]: weight of the previous posterior when --warm-start prior",
    "targets": "training targets: hard | soft | multilabel",
    "head": "head policy at relabel: reset | keep (keep needs --prior dp)",
    "relabel_every": "recluster every E epochs",
    "pca_dim": "PCA dimension before clustering (None: 256 for kmeans, 64 for dp; capped by feature dim)",
    "device": "auto | cpu | cuda",
    "resume": "continue the run in out_dir/name from its last checkpoint",
    "name": "run directory name (default derived from the config)",
    "out_dir": "parent folder of run directories",
}


def _base_type(tp):
    """int | None -> int; tuple[float, float] | None -> tuple; bool -> bool."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return tp


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description="Train a ConvNet with DeepCluster using k-means or a "
                                "variational DP-GMM as the clustering step.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", help=f"named preset from {PRESET_DIR.name}/ ({', '.join(list_presets())})")
    p.add_argument("--config", help="JSON config file (as written to a run's config.json)")
    defaults = Config()
    for section in dataclasses.fields(Config):
        group = p.add_argument_group(section.name)
        sub = getattr(defaults, section.name)
        sub_hints = typing.get_type_hints(type(sub))
        for f in dataclasses.fields(sub):
            flag = "--" + f.name.replace("_", "-")
            tp = _base_type(sub_hints[f.name])
            kw = dict(dest=f"{section.name}.{f.name}", default=argparse.SUPPRESS,
                      help=f"{HELP.get(f.name, '')} (default: {getattr(sub, f.name)})".strip())
            if tp is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            elif typing.get_origin(tp) is tuple:
                group.add_argument(flag, nargs=2, type=float, metavar=("SHAPE", "RATE"), **kw)
            else:
                group.add_argument(flag, type=tp, **kw)
    return p


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json")) if PRESET_DIR.exists() else []


def load_preset(name: str) -> dict:
    path = PRESET_DIR / f"{name}.json"
    if not path.exists():
        raise ValueError(f"unknown --preset {name!r}; choose one of {list_presets()}")
    return json.loads(path.read_text())


def config_from_args(argv: list[str] | None = None) -> Config:
    args = vars(build_parser().parse_args(argv))
    cfg = Config()
    preset, config_file = args.pop("preset", None), args.pop("config", None)
    if preset:
        cfg = merge(cfg, load_preset(preset))
    if config_file:
        cfg = merge(cfg, json.loads(Path(config_file).read_text()))
    overrides: dict[str, dict] = {}
    for key, value in args.items():
        section, name = key.split(".", 1)
        overrides.setdefault(section, {})[name] = value
    return merge(cfg, overrides)
