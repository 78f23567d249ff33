"""ConvNet trunks and the classifier head (DeepCluster, Caron et al. 2018, ``models/``).

A model is a trunk (image -> feature vector, the thing being learned) plus a separate linear head
(feature -> cluster logits) that is replaced or re-indexed every relabel. Features are taken after
the trunk's last ReLU, as DeepCluster does (its ``top_layer`` removed).

Registry ``ARCHS``:
- ``vgg-small``: VGG-BN for 28/32-px images, 6 conv layers (widths w, 2w, 4w), then FC-512.
- ``alexnet-bn``: DeepCluster's AlexNet with batch norm, for 64+ px images (FC-4096 features).
- ``vgg16-bn``: DeepCluster's VGG16 with batch norm, for 64+ px images (FC-4096 features).
``sobel=True`` prepends DeepCluster's fixed grey + Sobel filter (2 output channels).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class Sobel(nn.Module):
    """Fixed input filter: RGB -> grey (mean) -> horizontal and vertical Sobel gradients. (B,C,H,W) -> (B,2,H,W)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        kernel = torch.stack([kx, kx.t()])[:, None] / in_channels  # (2, 1, 3, 3), grey = mean over C
        self.register_buffer("kernel", kernel.repeat(1, in_channels, 1, 1))  # (2, C, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.kernel, padding=1)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _vgg_layers(c_in: int, plan: list) -> nn.Sequential:
    layers: list[nn.Module] = []
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += _conv_bn_relu(c_in, item)
            c_in = item
    return nn.Sequential(*layers)


class Trunk(nn.Module):
    """conv features -> fixed-size pool -> MLP. ``feature_dim`` is the output width."""

    def __init__(self, conv: nn.Module, pool: int, conv_channels: int, mlp: list[nn.Module], feature_dim: int,
                 sobel: nn.Module | None):
        super().__init__()
        self.sobel = sobel
        self.conv = conv
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.mlp = nn.Sequential(nn.Flatten(), *mlp)
        self.feature_dim = feature_dim
        self.conv_channels = conv_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, feature_dim)
        if self.sobel is not None:
            x = self.sobel(x)
        return self.mlp(self.pool(self.conv(x)))


def vgg_small(in_channels: int, width: int = 64) -> Trunk:
    """Small VGG-BN for 28/32-px inputs: [w,w,M,2w,2w,M,4w,4w,M] -> pool 2x2 -> FC-512 + BN + ReLU."""
    plan = [width, width, "M", 2 * width, 2 * width, "M", 4 * width, 4 * width, "M"]
    c = 4 * width
    mlp = [nn.Linear(c * 4, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True)]
    return Trunk(_vgg_layers(in_channels, plan), 2, c, mlp, 512, None)


def alexnet_bn(in_channels: int, width: int = 64) -> Trunk:
    """DeepCluster's AlexNet-BN (``models/alexnet.py``); ``width`` is ignored (kept for a uniform signature)."""
    conv = nn.Sequential(
        *_conv_bn_relu(in_channels, 96, 11, 4, 2), nn.MaxPool2d(3, 2),
        *_conv_bn_relu(96, 256, 5, 1, 2), nn.MaxPool2d(3, 2),
        *_conv_bn_relu(256, 384), *_conv_bn_relu(384, 384), *_conv_bn_relu(384, 256), nn.MaxPool2d(3, 2))
    mlp = [nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
           nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True)]
    return Trunk(conv, 6, 256, mlp, 4096, None)


def vgg16_bn(in_channels: int, width: int = 64) -> Trunk:
    """DeepCluster's VGG16-BN (``models/vgg16.py``); ``width`` is ignored."""
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    mlp = [nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
           nn.Linear(4096, 4096), nn.ReLU(inplace=True)]
    return Trunk(_vgg_layers(in_channels, plan), 7, 512, mlp, 4096, None)


ARCHS: dict[str, Callable[..., Trunk]] = {"vgg-small": vgg_small, "alexnet-bn": alexnet_bn, "vgg16-bn": vgg16_bn}


def new_head(feature_dim: int, num_outputs: int, generator: torch.Generator | None = None) -> nn.Linear:
    """A fresh linear head, initialised as DeepCluster's top layer (weights N(0, 0.01), bias 0)."""
    head = nn.Linear(feature_dim, num_outputs)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=generator)
        head.bias.zero_()
    return head


class Projection(nn.Module):
    """Projection head (DeepCluster-v2 / SwAV): Linear(F, hidden) -> BN -> ReLU -> Linear(hidden, dim), then L2
    normalisation when ``l2``. (B, F) -> (B, dim). The clustering space when clustering on the projection."""

    def __init__(self, in_dim: int, dim: int, hidden: int = 512, l2: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, dim))
        self.dim, self.l2 = dim, l2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.mlp(features)
        return nn.functional.normalize(z, dim=1) if self.l2 else z


class DeepClusterNet(nn.Module):
    """Trunk [+ projection] + head [+ coarse head].

    ``forward`` gives head logits (B, num_outputs); ``trunk(x)`` gives the features (B, F) that kNN and linear
    probes evaluate; :meth:`embed` gives what the head sees — the projection (B, P) when there is one (the
    clustering space for ``--cluster-on projection``), else the trunk features. ``coarse_outputs > 0`` adds a second
    linear head on the same input (``--coarse-head``: trained on the groups of components while ``head`` trains on
    the components, as IIC, SeLa and DeepCluster-v2 train several heads on one trunk).
    """

    def __init__(self, trunk: Trunk, num_outputs: int = 10, projection: Projection | None = None,
                 coarse_outputs: int = 0):
        super().__init__()
        self.trunk = trunk
        self.projection = projection
        self.head = new_head(self.embed_dim, num_outputs)
        self.coarse_head = new_head(self.embed_dim, coarse_outputs) if coarse_outputs else None

    @property
    def feature_dim(self) -> int:
        return self.trunk.feature_dim

    @property
    def embed_dim(self) -> int:
        """Input width of the head: the projection's dimension, or the trunk's feature dimension."""
        return self.projection.dim if self.projection is not None else self.trunk.feature_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)
        return self.projection(features) if self.projection is not None else features

    def forward(self, x: torch.Tensor, coarse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Head logits (B, num_outputs); with ``coarse`` also the coarse head's (B, coarse_outputs), from one pass
        (under DDP both heads must come out of ``forward`` for their gradients to be reduced)."""
        z = self.embed(x)
        if not coarse:
            return self.head(z)
        if self.coarse_head is None:
            raise ValueError("this model has no coarse head; build it with coarse_outputs > 0 (--coarse-head)")
        return self.head(z), self.coarse_head(z)


def build_model(arch: str, in_channels: int, *, sobel: bool = False, width: int = 64,
                num_outputs: int = 10, projection_dim: int = 0, projection_hidden: int = 512,
                projection_l2: bool = True, coarse_outputs: int = 0) -> DeepClusterNet:
    """Build ``arch`` (a key of ARCHS) for images with ``in_channels`` channels; ``projection_dim > 0`` adds a
    projection head of that output dimension between the trunk and the classifier head, ``coarse_outputs > 0`` a
    second classifier head of that many outputs."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)} (--arch)")
    if width < 1:
        raise ValueError(f"--width must be >= 1, got {width}")
    if projection_dim < 0 or (projection_dim and projection_hidden < 1):
        raise ValueError(f"--projection-dim must be >= 0 (0: none) and --projection-hidden >= 1, got "
                         f"{projection_dim} and {projection_hidden}")
    trunk = ARCHS[arch](2 if sobel else in_channels, width)
    if sobel:
        trunk.sobel = Sobel(in_channels)
    projection = (Projection(trunk.feature_dim, projection_dim, projection_hidden, projection_l2)
                  if projection_dim else None)
    return DeepClusterNet(trunk, num_outputs, projection, coarse_outputs)
