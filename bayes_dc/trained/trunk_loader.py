"""Load an exported bayes_dc trunk with torch alone (no bayes_dc install needed).

``experiments/export.py RUN --out DIR`` writes into DIR:

    trunk.pt      the trunk's state dict (tensors only: loads with ``torch.load(weights_only=True)``)
    trunk.json    architecture (arch, in_channels, width, sobel, feature_dim), input (image_size, per-channel mean
                  and std of images / 255), the sha256 of trunk.pt, and where it came from
    models.py     a copy of ``bayes_dc/models/nets.py`` (imports only torch), which defines the architectures
    trunk_loader.py   this file

Downstream use (a linear probe, transfer)::

    import sys; sys.path.insert(0, "DIR")
    from trunk_loader import load_trunk
    trunk, preprocess = load_trunk("DIR")                 # eval mode, on the CPU
    features = trunk(preprocess(images_uint8))            # (B, C, S, S) uint8 -> (B, feature_dim)

Images must be (B, C, S, S) with S = ``image_size``: the centred square of each image, resized (bilinear,
antialiased), e.g. torchvision's ``CenterCrop(min(h, w))`` then ``Resize(S, antialias=True)``. Inside bayes_dc
the same functions build the trunk of a run (``experiments/linear_probe.py``), from ``models.py`` next to this file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from pathlib import Path
from typing import Callable

import torch

TRUNK_FORMAT = "bayes_dc-trunk/1"
# what load_trunk reads from trunk.json (checked first, so a missing key is a one-line error, not a KeyError)
_TRUNK_KEYS = ("sha256", "architecture", "input")
_ARCHITECTURE_KEYS = ("arch", "in_channels", "sobel", "width")
_INPUT_KEYS = ("mean", "std")


def _models():
    """The architecture module: ``bayes_dc.models.nets`` inside the package, else the ``models.py`` next to this file."""
    if __package__:
        from bayes_dc.models import nets as models
        return models
    spec = importlib.util.spec_from_file_location("_bayes_dc_exported_models", Path(__file__).with_name("models.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_trunk(meta: dict, state_dict: dict | None = None) -> torch.nn.Module:
    """The trunk that ``meta`` (trunk.json's ``architecture``) describes, with ``state_dict`` loaded strictly (None:
    the architecture's initialisation, drawn from torch's global generator), in eval mode."""
    trunk = _models().build_model(meta["arch"], meta["in_channels"], sobel=meta["sobel"], width=meta["width"]).trunk
    if state_dict is not None:
        trunk.load_state_dict(state_dict)
    return trunk.eval()


def normalizer(mean: list[float], std: list[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images (B, C, S, S) -> float32 (images / 255 - mean) / std per channel, on the images' device."""
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def preprocess(images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        return (x - mean_t.to(x.device)) / std_t.to(x.device)
    return preprocess


def load_trunk(directory: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(trunk in eval mode on ``device``, preprocess) from an export directory; checks trunk.pt's sha256 first.

    Raises ValueError (one line naming the file) for another format, a trunk.json missing a key, a damaged trunk.pt
    or a missing file. trunk.pt is read once: the bytes whose sha256 is checked are the bytes loaded."""
    directory = Path(directory)
    described = directory / "trunk.json"
    try:
        meta = json.loads(described.read_text())
        weights = (directory / "trunk.pt").read_bytes()
    except (OSError, ValueError) as err:
        raise ValueError(f"{directory} is not a trunk export ({err}); write one with experiments/export.py") from None
    if not isinstance(meta, dict) or meta.get("format") != TRUNK_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{described} has format {found!r}; this loader reads {TRUNK_FORMAT}")
    for key, keys in (("", _TRUNK_KEYS), ("architecture", _ARCHITECTURE_KEYS), ("input", _INPUT_KEYS)):
        part = meta.get(key) if key else meta
        missing = [k for k in keys if not isinstance(part, dict) or k not in part]
        if missing:
            where = f"{key}." if key else ""
            raise ValueError(f"{described} lacks {', '.join(where + k for k in missing)}: the export is incomplete "
                             f"or damaged; export the run again with experiments/export.py")
    if hashlib.sha256(weights).hexdigest() != meta["sha256"]:
        raise ValueError(f"{directory / 'trunk.pt'} does not match the sha256 in trunk.json: the file is damaged")
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    trunk = build_trunk(meta["architecture"], state).to(device)
    return trunk, normalizer(meta["input"]["mean"], meta["input"]["std"])


__all__ = ["TRUNK_FORMAT", "build_trunk", "load_trunk", "normalizer"]
