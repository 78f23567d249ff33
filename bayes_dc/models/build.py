"""The model a run's configuration describes, and the features it clusters: shared by a run
(:mod:`bayes_dc.loop.pipeline`) and by a loaded one (:mod:`bayes_dc.trained.load`), so a loaded checkpoint always
finds the architecture it was saved from and a new image is mapped as the training images were."""
from __future__ import annotations

import torch

from bayes_dc.config import Config
from bayes_dc.models.nets import build_model


def head_outputs(cfg: Config) -> int:
    """Outputs of the classifier head: one per component of the backend (``k`` or ``truncation``, as its traits say); the coarse head
    has as many (there are never more groups than components)."""
    return cfg.cluster.n_components


def build_run_model(cfg: Config, channels: int) -> torch.nn.Module:
    """The model ``cfg`` describes for images of ``channels`` (trunk, optional projection, head, optional coarse
    head); shared by a run and by ``load_run``, so a loaded checkpoint always finds the architecture it was saved
    from."""
    m = cfg.model
    return build_model(m.arch, channels, sobel=m.sobel, width=cfg.width, num_outputs=head_outputs(cfg),
                       projection_dim=m.projection_dim if cfg.features.cluster_on == "projection" else 0,
                       projection_hidden=m.projection_hidden, projection_l2=m.projection_l2,
                       coarse_outputs=head_outputs(cfg) if cfg.targets.coarse_head else 0)


@torch.no_grad()
def clustered_features(model: torch.nn.Module, cfg: Config, feats: torch.Tensor, device: torch.device) -> torch.Tensor:
    """What ``--cluster-on`` clusters: the trunk features (N, F) themselves, or their projection (N, P) (eval mode,
    in chunks); shared by a run and by ``load_run``, so a new image is mapped as the training images were."""
    projection = model.projection
    if cfg.features.cluster_on == "trunk" or projection is None:
        return feats
    was_training = projection.training
    projection.eval()
    # chunks of streamed features come from a memmap on the CPU, maybe float16
    out = torch.cat([projection(chunk.to(device, torch.float32)) for chunk in feats.split(cfg.features.extract_batch)])
    projection.train(was_training)
    return out
