"""Train the ConvNet on fixed targets for one epoch. No I/O, no clustering: the pipeline owns both."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bayes_dc.data.augment import standardize
from bayes_dc.config.rules import OptionError
from bayes_dc.loop.context import RunContext
from bayes_dc.loop.targets import ClusterLoss, Targets, swapped_targets


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


def space_loss(ctx: RunContext, z_a: torch.Tensor, z_b: torch.Tensor, views: SwappedViews,
               generator: torch.Generator) -> torch.Tensor:
    """``space_weight``'s loss: the space's pair loss (:meth:`bayes_dc.spaces.base.Reducer.pair_loss`) on the
    embeddings (B, P) of an image's two views in the round's space; its gradient reaches the trunk through them, so
    the ConvNet learns the structure the space is built from."""
    loss = ctx.reducer.pair_loss(z_a, z_b, views.reduce_state, generator)
    if loss is None:
        raise OptionError("space_weight", f"space_weight > 0 needs a space with a pair loss; the {ctx.reducer.name!r} "
                          "space has none (use the 'pumap' space or set space_weight to 0)")
    return loss


def two_head_loss(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """``--coarse-head``: the mean of the fine and the coarse head's losses. The mean, not the sum, keeps the trunk's
    gradient on the scale of one head, so a learning rate chosen for one head stays right (DeepCluster-v2 averages
    the loss over its prototype sets the same way); equal weights because which granularity teaches depends on the
    data (issue 24: coarse on grey images, fine on natural ones), so neither is favoured a priori."""
    return 0.5 * (fine + coarse)


def train_epoch(ctx: RunContext, targets: Targets, indices: torch.Tensor, *, generator: torch.Generator,
                desc: str = "train", views: SwappedViews | None = None) -> dict:
    """One pass of ``ctx.model`` over ``indices`` (the epoch's sampled point ids) in mini-batches.

    Reads from ``ctx``: the model (through DDP under torchrun), the training images (``ctx.train_source``) with
    their ``mean``/``std``, the optimisers (trunk and head, stepped together as in DeepCluster), the device, and
    ``cfg.train``'s batch size and augmentation (``cfg.run.progress`` for the bar). Under torchrun each process
    trains on its share of every batch of ``indices`` (``Distributed.share_batches``); loss and agreement are
    those of the whole batches.

    Args:
        targets: the current round's targets (``Targets.batch`` gives the loss's target for a batch).
        indices: (S,) int64 point ids, already drawn by the cluster-balanced sampler (the same on every rank).
        generator: CPU generator of the augmentation (``ctx.augmenter``: crop offsets, flips, ...).
        views: with ``--two-views``, two augmented views of each image are trained with swapped targets: each view
            learns the responsibilities of the other view under the round's fit (:func:`swapped_targets`), so the
            targets follow the augmentation instead of being fixed per image; the loss is the mean of the two.
    Returns:
        {"loss": mean loss, "agreement": share of samples whose head argmax equals the target argmax,
         "seconds": wall time, "steps": number of optimiser steps}.
    """
    model, device, tr, dist = ctx.trained_model, ctx.device, ctx.cfg.train, ctx.dist
    optimizers, progress = [ctx.trunk_opt, ctx.head_opt], ctx.cfg.run.progress and dist.is_main
    loss_fn = ClusterLoss(targets.kind)
    model.train()
    used = targets.used.to(device)
    coarse_used = targets.coarse.used.to(device) if targets.coarse is not None else None
    total, steps, agree, seen = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    # this process's part of each global batch (all of it in one process), and where it sits in that batch
    local, local_batch, shares = dist.share_batches(indices, tr.batch_size)
    bar = tqdm(total=len(shares), desc=desc, disable=not progress, leave=False, unit="batch")
    for (idx, batch), (offset, global_size) in zip(ctx.train_source.train_batches(local, local_batch), shares):
        bar.update(1)
        if global_size < 2:  # batch norm cannot train on a single sample
            continue
        share = (offset, global_size) if dist.active else None
        if views is None and targets.coarse is None:
            logits = model(standardize(ctx.augmenter(batch, generator, share), ctx.mean, ctx.std))
            loss = loss_fn(logits, targets.batch(idx, device), used)
        elif views is None:   # --coarse-head
            logits, coarse_logits = model(standardize(ctx.augmenter(batch, generator, share), ctx.mean, ctx.std),
                                          coarse=True)
            loss = two_head_loss(loss_fn(logits, targets.batch(idx, device), used),
                                 loss_fn(coarse_logits, targets.coarse.batch(idx, device), coarse_used))
        else:   # one process (pipeline.check_distributed): the model is ctx.model itself
            z_a = model.embed(standardize(ctx.augmenter(batch, generator), ctx.mean, ctx.std))
            z_b = model.embed(standardize(ctx.augmenter(batch, generator), ctx.mean, ctx.std))
            logits, logits_b = model.head(z_a), model.head(z_b)
            target_a, target_b = swapped_targets(targets.kind, *view_responsibilities(ctx, z_a, views, used),
                                                 *view_responsibilities(ctx, z_b, views, used), targets.num_outputs,
                                                 ctx.cfg.targets.sharpen)
            loss = 0.5 * (loss_fn(logits, target_a, used) + loss_fn(logits_b, target_b, used))
            if tr.space_weight > 0:
                loss = loss + tr.space_weight * space_loss(ctx, z_a, z_b, views, generator)
        if dist.active:
            # DDP averages the ranks' gradients; weighting each rank's mean by its share of the batch makes that
            # average the gradient of the global batch's mean loss (shares differ only in a last, shorter batch)
            loss = loss * (idx.shape[0] * dist.world / global_size)
        reported = dist.all_reduce(loss.detach()) / dist.world if dist.active else loss
        if not torch.isfinite(reported):
            raise FloatingPointError(f"training loss became {reported.item()} at step {steps}; lower --lr")
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        total += reported.item()
        steps += 1
        # Share of samples whose head argmax already matches the target argmax: how "learned" the targets are.
        agree += int((logits.detach().argmax(1).cpu() == targets.labels[idx]).sum())
        seen += idx.shape[0]
        if progress and steps % 20 == 0:
            bar.set_postfix(loss=f"{total / steps:.3f}")
    bar.close()
    if dist.active:
        agree, seen = (int(v) for v in dist.all_reduce(torch.tensor([agree, seen], dtype=torch.float64)).tolist())
    return {"loss": total / max(steps, 1), "agreement": agree / max(seen, 1), "seconds": time.perf_counter() - t0,
            "steps": steps}
