"""Train the ConvNet on fixed targets for one epoch. No I/O, no clustering: the pipeline owns both."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .augment import standardize
from .context import RunContext
from .targets import ClusterLoss, Targets, swapped_targets


@dataclass
class SwappedViews:
    """What ``--two-views`` needs to assign augmented views to the round's clusters on the fly: the backend's
    ``ClusterResult.predictor`` and the reducer's state of the same round (``Reduction.state``)."""

    predictor: dict
    reduce_state: dict | None


@torch.no_grad()
def view_responsibilities(ctx: RunContext, embeddings: torch.Tensor, views: SwappedViews,
                          used: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k responsibilities (B, k) of a batch of view embeddings (B, P) under the round's fit, restricted to the
    components that are targets this round (``used`` (T,) bool). The embeddings come from the training-mode
    forward pass (batch-norm batch statistics), which saves a second forward pass."""
    points = ctx.reducer.transform(embeddings.detach(), views.reduce_state)
    return ctx.backend.responsibilities(views.predictor, points, allowed=used)


def train_epoch(ctx: RunContext, targets: Targets, indices: torch.Tensor, *, generator: torch.Generator,
                desc: str = "train", views: SwappedViews | None = None) -> dict:
    """One pass of ``ctx.model`` over ``indices`` (the epoch's sampled point ids) in mini-batches.

    Reads from ``ctx``: the model, the training images ``(N, C, H, W)`` uint8 with their ``mean``/``std``, the
    optimisers (trunk and head, stepped together as in DeepCluster), the device, and ``cfg.train``'s batch
    size and augmentation (``cfg.run.progress`` for the bar).

    Args:
        targets: the current round's targets (``Targets.batch`` gives the loss's target for a batch).
        indices: (S,) int64 point ids, already drawn by the cluster-balanced sampler.
        generator: CPU generator of the augmentation (``ctx.augmenter``: crop offsets, flips, ...).
        views: with ``--two-views``, two augmented views of each image are trained with swapped targets: each view
            learns the responsibilities of the other view under the round's fit (:func:`swapped_targets`), so the
            targets follow the augmentation instead of being fixed per image; the loss is the mean of the two.
    Returns:
        {"loss": mean loss, "agreement": share of samples whose head argmax equals the target argmax,
         "seconds": wall time, "steps": number of optimiser steps}.
    """
    model, device, tr = ctx.model, ctx.device, ctx.cfg.train
    images, optimizers, progress = ctx.images, [ctx.trunk_opt, ctx.head_opt], ctx.cfg.run.progress
    loss_fn = ClusterLoss(targets.kind)
    model.train()
    used = targets.used.to(device)
    total, steps, agree, seen = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(range(0, indices.shape[0], tr.batch_size), desc=desc, disable=not progress, leave=False,
               unit="batch")
    for start in bar:
        idx = indices[start:start + tr.batch_size]
        if idx.shape[0] < 2:  # batch norm cannot train on a single sample
            continue
        batch = images[idx.to(images.device)].to(device, non_blocking=True)
        if views is None:
            logits = model(standardize(ctx.augmenter(batch, generator), ctx.mean, ctx.std))
            loss = loss_fn(logits, targets.batch(idx, device), used)
        else:
            z_a = model.embed(standardize(ctx.augmenter(batch, generator), ctx.mean, ctx.std))
            z_b = model.embed(standardize(ctx.augmenter(batch, generator), ctx.mean, ctx.std))
            logits, logits_b = model.head(z_a), model.head(z_b)
            target_a, target_b = swapped_targets(targets.kind, *view_responsibilities(ctx, z_a, views, used),
                                                 *view_responsibilities(ctx, z_b, views, used), targets.num_outputs,
                                                 ctx.cfg.targets.sharpen)
            loss = 0.5 * (loss_fn(logits, target_a, used) + loss_fn(logits_b, target_b, used))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {steps}; lower --lr")
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        total += loss.item()
        steps += 1
        # Share of samples whose head argmax already matches the target argmax: how "learned" the targets are.
        agree += int((logits.detach().argmax(1).cpu() == targets.labels[idx]).sum())
        seen += idx.shape[0]
        if progress and steps % 20 == 0:
            bar.set_postfix(loss=f"{total / steps:.3f}")
    return {"loss": total / max(steps, 1), "agreement": agree / max(seen, 1), "seconds": time.perf_counter() - t0,
            "steps": steps}
