"""``run(config)``: the DeepCluster round loop, for any clustering backend.

Each epoch e (0-based) of a run:
1. if e is a relabel epoch (see :func:`relabel_due`): extract trunk features of all training images,
   reduce them to the clustering space (``--reduce``: PCA whitening + L2, or UMAP; refit, warm state in / out),
   cluster with the backend (warm state in / out), evaluate the clustering,
   build targets and set up the head (``reset``: fresh head; ``keep``: rows follow the permutation);
2. optionally evaluate kNN accuracy on the eval split;
3. train one epoch on the fixed targets with cluster-balanced sampling;
4. append one record to metrics.jsonl and checkpoint atomically (resume restarts at the next epoch).
After the last epoch the final trunk is clustered and evaluated once more (record ``phase: "final"``).

What stays fixed for the run (config, data, model, optimisers, device, backend, run directory) is built once
by :func:`setup` into a :class:`~bayes_dc.loop.context.RunContext` that every stage takes; what changes from epoch
to epoch (round, targets, warm state, ...) is the ``state`` dict that checkpoints store.

Randomness is derived from (seed, purpose, epoch) only, so a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bayes_dc.evaluation import metrics
from bayes_dc.data.augment import Augmenter
from bayes_dc.loop.batches import BatchSource
from bayes_dc.clustering import ClusterResult, make_backend
from bayes_dc.clustering.grouping import Grouping, group_components, grouped_result
from bayes_dc.config.schema import Config
from bayes_dc.loop.context import RunContext
from bayes_dc.data import load_dataset
from bayes_dc.runtime.distributed import (Distributed, check_batch_size, convert_sync_batchnorm, init_from_env, resolve_device, shutdown, wrap_ddp)
from bayes_dc.evaluation.lineage import round_lineage
from bayes_dc.models.nets import new_head
from bayes_dc.config.rules import OptionError, check_config, check_option
from bayes_dc.spaces.base import Reduction
from bayes_dc.spaces.registry import make_reducer
from bayes_dc.rundir.runlog import ReadOnlyRunDir, RunDir, graceful_interrupt, run_path, save_checkpoint
from bayes_dc.loop.targets import Targets, build_targets, sample_epoch
from bayes_dc.runtime.threads import set_threads
from bayes_dc.loop.trainer import SwappedViews, train_epoch
from bayes_dc.models.build import build_run_model, clustered_features, head_outputs
from bayes_dc.rundir.final import FINAL_CHECKPOINT, FINAL_FORMAT


def relabel_due(cfg: Config, epoch: int, last_relabel: int | None, agreement: float | None) -> bool:
    """Whether epoch ``epoch`` starts with a new clustering.

    ``fixed``: every ``cfg.relabel_every`` epochs (unset: the backend's default, ``BackendTraits.relabel_every``).
    ``adaptive``: once the head agreed with its targets on at least ``relabel_agreement`` of the previous epoch's
    samples (the targets are learned, so they teach nothing new), and at the latest ``relabel_max_gap`` epochs
    after the last relabel.
    """
    if last_relabel is None:
        return True
    tr, gap = cfg.train, epoch - last_relabel
    if tr.relabel == "fixed":
        return gap >= cfg.relabel_every
    return gap >= tr.relabel_max_gap or (agreement is not None and agreement >= tr.relabel_agreement)


def derive_seed(seed: int, *parts: str | int) -> int:
    """A 31-bit seed for one purpose and step, derived from the run seed (numpy SeedSequence hashing)."""
    words = [seed] + [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") % (2**32) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0] % (2**31 - 1))


class RunInterrupted(KeyboardInterrupt):
    """The run stopped at a checkpoint because a stop was asked for (Ctrl-C, a scheduler's SIGTERM); the message
    is one line naming the checkpoint and ``--resume``. A KeyboardInterrupt, so ``except Exception`` lets it by."""


class RunDiverged(FloatingPointError):
    """The loss or the clustering objective stopped being finite; the message names the epoch and the checkpoint
    that is kept (the last one written before the divergence)."""


def validate(cfg: Config) -> None:
    """Reject a bad configuration before anything is written: every rule of :mod:`bayes_dc.config.rules` (ranges,
    choices, rules between options), an :class:`~bayes_dc.config.rules.OptionError` naming the option."""
    check_config(cfg)


def permute_head(head: torch.nn.Linear, permutation: np.ndarray, generator: torch.Generator) -> torch.nn.Linear:
    """A new head whose row ``permutation[j]`` is the old row j; rows no old id maps to start fresh.

    ``permutation[j] == -1`` (component reset to the prior) drops old row j.
    """
    fresh = new_head(head.in_features, head.out_features, generator).to(head.weight.device)
    with torch.no_grad():
        keep = np.flatnonzero(permutation >= 0)
        src = torch.from_numpy(keep).to(head.weight.device)
        dst = torch.from_numpy(permutation[keep].astype(np.int64)).to(head.weight.device)
        fresh.weight[dst] = head.weight[src]
        fresh.bias[dst] = head.bias[src]
    return fresh


class _Progress:
    """Outer progress bar over epochs, with the last clustering's headline numbers."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str):
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="epoch")

    def update(self, record: dict) -> None:
        shown = {k: record[k] for k in ("nmi", "k_active", "loss", "knn") if record.get(k) is not None}
        self.bar.set_postfix({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in shown.items()})
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _head_optimizer(cfg: Config, *heads: torch.nn.Module | None) -> torch.optim.Optimizer:
    """One optimiser over the heads (the classifier head and, with ``--coarse-head``, the coarse one; None: none)."""
    tr = cfg.train
    params = [p for head in heads if head is not None for p in head.parameters()]
    return torch.optim.SGD(params, lr=tr.head_lr or tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay)


def install_head(ctx: RunContext, head: torch.nn.Linear, coarse_head: torch.nn.Linear | None = None) -> None:
    """Put ``head`` (and ``coarse_head``, if given) on the model, with a fresh optimiser (DeepCluster: momentum does
    not carry over); several processes wrap the model in DDP again (DDP fixes its parameters when it is built)."""
    ctx.model.head = head
    if coarse_head is not None:
        ctx.model.coarse_head = coarse_head
    ctx.head_opt = _head_optimizer(ctx.cfg, ctx.model.head, ctx.model.coarse_head)
    if ctx.dist.active:
        ctx.ddp = wrap_ddp(ctx.model, ctx.device)


def setup(cfg: Config) -> RunContext:
    """Check ``cfg``, load the data, build backend, model and optimisers, and open the run directory.

    Nothing is written before every check has passed, including the sizes against the data (:func:`check_sizes`)
    and, with ``--resume``, the checkpoint (loaded and verified into ``ctx.start``). The model is initialised from
    the run seed. Under torchrun this joins the process group first; rank 0 writes the run directory.
    """
    validate(cfg)
    dist, device = init_from_env(cfg.run.device)
    if dist.active:
        check_distributed(cfg, dist.world)
    set_threads(cfg.run.threads)  # parallel runs on one machine must not each grab every core
    train_set, eval_set = _load_data(cfg)
    check_sizes(cfg, train_set, eval_set, dist.world)
    if cfg.run.tensorboard:
        from bayes_dc.rundir.tblog import TensorBoardLogger
    backend = make_backend(cfg.cluster, device)
    if dist.active:   # each rank fits on its own rows (checked by check_distributed)
        backend.dist = dist
    reducer = make_reducer(cfg, allreduce=dist.all_reduce if dist.active else None, device=device, dist=dist)
    rundir, start = _open_run_dir(cfg, dist)

    torch.manual_seed(derive_seed(cfg.run.seed, "init"))
    model = build_run_model(cfg, train_set.num_channels).to(device)
    if dist.active:
        model = convert_sync_batchnorm(model, device)
    mean, std = train_set.mean_std()
    tr = cfg.train
    # the projection head belongs to the representation (kept across rounds), so it trains with the trunk
    trunk_params = list(model.trunk.parameters()) + (list(model.projection.parameters()) if model.projection else [])
    trunk_opt = torch.optim.SGD(trunk_params, lr=tr.lr, momentum=tr.momentum,
                                weight_decay=tr.weight_decay)
    rundir.start(cfg, device, world_size=dist.world)  # the first write, after every check above passed (rank 0)
    dist.barrier()
    scratch = Path(cfg.run.scratch_dir) if cfg.run.scratch_dir else rundir.path / "scratch"
    sources = {split: BatchSource(ds, device, scratch=scratch, memmap_dtype=cfg.features.memmap_dtype,
                                  tag=f"{split}-rank{dist.rank}")
               for split, ds in (("train", train_set), ("eval", eval_set)) if ds is not None}
    ctx = RunContext(cfg=cfg, device=device, train_set=train_set, eval_set=eval_set, train_source=sources["train"],
                     eval_source=sources.get("eval"), mean=mean, std=std, model=model, trunk_opt=trunk_opt,
                     head_opt=_head_optimizer(cfg, model.head, model.coarse_head), backend=backend, reducer=reducer,
                     augmenter=Augmenter(tr.augment, padding=tr.crop_padding, scale=tr.crop_scale), rundir=rundir,
                     dist=dist, start=start)
    if dist.active:
        ctx.ddp = wrap_ddp(model, device)
    return ctx


def _open_run_dir(cfg: Config, dist: Distributed) -> tuple[RunDir, dict | None]:
    """The checked, still unwritten run directory and, with ``--resume``, the checkpoint to start from.

    Rank 0 checks (another rank looking at the directory could see rank 0's first files and call it taken) and
    tells the others the outcome, so every rank raises the same error or none; the others then read the
    checkpoint through a :class:`ReadOnlyRunDir`.
    """
    rundir, start, error = None, None, None
    if dist.is_main:
        try:
            rundir = RunDir.prepare(cfg)
            start = rundir.load_checkpoint() if cfg.run.resume else None   # a damaged checkpoint stops the run here
        except RuntimeError as err:   # RunDirError, CheckpointError
            error = err
    error = dist.broadcast_object(error)
    if error is not None:
        raise error
    if not dist.is_main:
        rundir = ReadOnlyRunDir(run_path(cfg))
        start = rundir.load_checkpoint() if cfg.run.resume else None
    return rundir, start


def check_distributed(cfg: Config, world: int) -> None:
    """What a run of ``world`` processes cannot do, refused before anything is written."""
    check_batch_size(cfg.train.batch_size, world)
    if cfg.train.two_views:
        raise OptionError("two_views", "two_views=True runs in one process for now (its two forward passes per step "
                                       "bypass DDP's gradient reduction); run without torchrun, or set two_views=False")
    for option, value in cfg.cluster.traits.one_process:
        if getattr(cfg.cluster, option) == value:
            raise OptionError(option, f"{option}={value!r} runs in one process with prior={cfg.cluster.prior!r}; under "
                                      f"torchrun choose another `{option}` (inference='cavi' all-reduces its statistics "
                                      "over the processes), or run without torchrun")


def check_sizes(cfg: Config, train_set, eval_set, world: int = 1) -> None:
    """Check the options that depend on the data (N, the image size) before anything is written.

    Raises :class:`~bayes_dc.config.rules.OptionError` naming the option and the limit: --k or --truncation above N, a batch larger than N (or
    than the images an epoch draws), UMAP's neighbours or dimension too large for N, fewer images than processes,
    and an architecture that cannot take the images (a dry forward pass on the meta device, no memory, no
    randomness used).
    """
    n, c, tr = len(train_set), cfg.cluster, cfg.train
    if c.n_components > n:
        option = c.traits.size_option
        raise OptionError(option, f"{option}={c.n_components} exceeds the number of training images ({n}); a component "
                                  f"needs at least one point, so lower `{option}` to at most {n} or use more images")
    samples = tr.epoch_samples or n
    if tr.batch_size > samples:
        raise OptionError("batch_size", f"batch_size={tr.batch_size} is larger than the {samples} images an epoch draws "
                                        f"({'`epoch_samples`' if tr.epoch_samples else 'the training set'}); lower "
                                        "`batch_size`")
    if cfg.reduce in ("umap", "pumap"):
        f = cfg.features
        if n <= f.umap_neighbors + 1:
            raise OptionError("umap_neighbors", f"umap_neighbors={f.umap_neighbors} needs more than "
                                                f"{f.umap_neighbors + 1} training images, got {n}; lower "
                                                "`umap_neighbors` or use reduce='pca'")
        if f.reduce_dim >= n - 1:
            raise OptionError("reduce_dim", f"reduce_dim={f.reduce_dim} must be below N - 1 = {n - 1}")
    if n < world:
        raise ValueError(f"{n} training images cannot be shared by {world} processes; use fewer processes")
    _check_architecture(cfg, train_set.num_channels, train_set.image_size)


def _check_architecture(cfg: Config, channels: int, size: int) -> None:
    """A forward pass of two (channels, size, size) images through the model on the meta device (shapes only)."""
    def fits(side: int) -> bool:
        with torch.device("meta"):
            model = build_run_model(cfg, channels).eval()
            try:
                model(torch.zeros(2, channels, side, side))
            except RuntimeError:
                return False
        return True

    if fits(size):
        return
    smallest = next((s for s in range(size + 1, 1025) if fits(s)), None)
    need = f"images of at least {smallest} px" if smallest else "larger images"
    raise OptionError("arch", f"arch={cfg.model.arch!r} needs {need}, but {cfg.data.dataset} images are {size} px; pass "
                              f"image_size={smallest or 2 * size} (resizes), or use arch='vgg-small' for small images")


def load_split(cfg: Config, split: str, subset: int | None):
    """One split of ``cfg``'s dataset, in memory or streamed as ``--streaming`` / ``--memory-budget-gb`` say."""
    d = cfg.data
    budget = None if d.memory_budget_gb is None else int(d.memory_budget_gb * 2**30)
    check_option("memory_budget_gb", d.memory_budget_gb)
    return load_dataset(d.dataset, split, root=d.data_root, subset=subset, seed=cfg.run.seed,
                        image_size=d.image_size, download=d.download, streaming=d.streaming, memory_budget=budget,
                        num_workers=d.num_workers, progress=cfg.run.progress)


def _load_data(cfg: Config):
    """(training set, eval set or None). The eval set is dropped when either split has no labels."""
    d = cfg.data
    train_set = load_split(cfg, "train", d.subset)
    eval_set = None
    if d.eval_split != "none":
        try:
            eval_set = load_split(cfg, d.eval_split, d.eval_subset)
        except ValueError as err:
            if d.dataset != "imagefolder":
                raise
            warnings.warn(f"kNN evaluation skipped: {err} (pass --eval-split none to silence this)")
        if eval_set is not None and (eval_set.labels is None or train_set.labels is None):
            eval_set = None
    return train_set, eval_set


def _initial_state() -> dict:
    """The round loop's state: what a checkpoint stores besides model and optimisers."""
    return {"epoch": 0, "round": 0, "targets": None, "warm_state": None, "reduce_state": None, "predictor": None,
            "prev_labels": None, "last_relabel": None, "agreement": None}


def _restore(ctx: RunContext) -> dict:
    """The loop state to start from: the checkpoint's (model and optimisers loaded) with --resume, else fresh."""
    ckpt, ctx.start = ctx.start, None   # loaded (and verified) by setup; not kept for the whole run
    if ckpt is None:
        return _initial_state()
    ctx.model.load_state_dict(ckpt["model"])
    ctx.trunk_opt.load_state_dict(ckpt["trunk_opt"])
    ctx.head_opt.load_state_dict(ckpt["head_opt"])
    return ckpt["state"]


def _check_finite_weights(model: torch.nn.Module) -> None:
    """FloatingPointError when a weight or buffer is NaN/inf (a loss can stay finite for a step after that)."""
    bad = [name for name, value in model.state_dict().items()
           if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise FloatingPointError(f"the model has NaN/inf weights after training ({', '.join(bad[:3])})")


def _save_checkpoint(ctx: RunContext, state: dict) -> None:
    ctx.rundir.save_checkpoint({"model": ctx.model.state_dict(), "trunk_opt": ctx.trunk_opt.state_dict(),
                                "head_opt": ctx.head_opt.state_dict(), "state": state, "config": ctx.cfg.to_dict()})


def run(cfg: Config) -> dict:
    """Run (or resume) the experiment described by ``cfg``; return the final record.

    The first SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop) lets the current epoch finish and checkpoint, then
    raises :class:`RunInterrupted`; a second one stops at once (KeyboardInterrupt). A loss, weight or clustering
    objective that stops being finite raises :class:`RunDiverged` naming the epoch; the checkpoint on disk is
    then the last one of a finite model.
    """
    ctx = setup(cfg)
    state = None
    try:
        state = _restore(ctx)
        # under torchrun a terminal's Ctrl-C reaches each worker twice (directly, and forwarded by the agent)
        with graceful_interrupt((signal.SIGINT, signal.SIGTERM), debounce=2.0 if ctx.dist.active else 0.0) as stop:
            return _run(ctx, state, stop)
    except FloatingPointError as err:
        epoch = state["epoch"] if state else 0   # advanced only after an epoch was checked, logged, checkpointed
        where = f"epoch {epoch}" if epoch < cfg.train.epochs else "the final clustering"
        kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch else "no checkpoint was written"
        raise RunDiverged(f"{where} diverged: {err}; {kept} in {ctx.rundir.path}. Start a new run with a lower "
                          f"--lr") from None
    finally:
        for source in (ctx.train_source, ctx.eval_source):
            if source is not None:
                source.remove_features()
        ctx.ddp = None   # DDP holds the process group: shutdown() can free the group only without it
        shutdown()


def _run(ctx: RunContext, state: dict, stop) -> dict:
    cfg = ctx.cfg
    ctx.rundir.truncate_metrics(state["epoch"])
    if cfg.run.tensorboard and ctx.dist.is_main:
        from bayes_dc.rundir.tblog import TensorBoardLogger
        ctx.tb = TensorBoardLogger(ctx.rundir.path)
    tr = cfg.train
    progress = _Progress(tr.epochs, state["epoch"], cfg.run.progress and ctx.dist.is_main, ctx.rundir.path.name)
    for epoch in range(state["epoch"], tr.epochs):
        t_epoch = time.perf_counter()
        record = {"epoch": epoch, "phase": "train"}
        train_feats = None
        if relabel_due(cfg, epoch, state["last_relabel"], state["agreement"]):
            train_feats, info = _relabel(ctx, state, epoch)
            record.update(info)
        if ctx.eval_set is not None and cfg.run.knn_every and epoch % cfg.run.knn_every == 0:
            record["knn"] = _knn(ctx, train_feats)

        targets: Targets = state["targets"]
        gen = torch.Generator().manual_seed(derive_seed(cfg.run.seed, "epoch", epoch))
        torch.manual_seed(derive_seed(cfg.run.seed, "torch", epoch))  # dropout
        indices = sample_epoch(targets, tr.epoch_samples or len(targets), gen)
        views = SwappedViews(state["predictor"], state["reduce_state"]) if tr.two_views else None
        stats = train_epoch(ctx, targets, indices, generator=gen, desc=f"epoch {epoch}", views=views)
        _check_finite_weights(ctx.model)   # before anything of this epoch is logged or checkpointed
        state["agreement"] = stats["agreement"]
        record.update(loss=stats["loss"], agreement=stats["agreement"], train_seconds=stats["seconds"],
                      epoch_seconds=time.perf_counter() - t_epoch)
        if "cluster_seconds" in record:
            record["cluster_share"] = record["cluster_seconds"] / record["epoch_seconds"]
        record = ctx.rundir.log(record)
        if ctx.tb is not None:
            ctx.tb.log_record(record)
        state["epoch"] = epoch + 1
        _save_checkpoint(ctx, state)
        progress.update(record)
        if ctx.dist.any(stop.requested):   # every rank stops after the same epoch
            progress.close()
            raise RunInterrupted(f"{stop.signal_name} received: stopped after epoch {epoch} with its checkpoint in "
                                 f"{ctx.rundir.path}; continue with the same options and --resume "
                                 f"(--name {ctx.rundir.path.name})")
    progress.close()

    final = _final_record(ctx, state)
    if ctx.tb is not None:
        ctx.tb.log_record(final)
        ctx.tb.close()
    if cfg.run.figures and ctx.dist.is_main:
        from bayes_dc.evaluation.plots import plot_run
        plot_run(ctx.rundir.path)
    return final


def _relabel(ctx: RunContext, state: dict, epoch: int) -> tuple[torch.Tensor, dict]:
    """Cluster, record the round, and set up the next epochs' targets and head; advances ``state``.

    Returns (trunk features (N, F) of the training images, the record fields of the round).
    """
    cfg = ctx.cfg
    train_feats, result, reduction, grouping, info = _cluster_round(ctx, state)
    _snapshot_and_lineage(ctx.rundir, state["round"], epoch, result)
    if ctx.tb is not None:
        ctx.tb.log_clusters(epoch, ctx.train_set, result.labels, result.weights)
    state["targets"] = build_targets(result, cfg.targets.targets, tau=cfg.targets.sharpen,
                                     balanced=cfg.targets.balanced)
    gen = torch.Generator().manual_seed(derive_seed(cfg.run.seed, "head", state["round"]))
    if cfg.targets.head == "keep" and ctx.backend.has_identities and result.permutation is not None:
        head = permute_head(ctx.model.head, result.permutation, gen)
    else:
        head = new_head(ctx.model.embed_dim, head_outputs(cfg), gen).to(ctx.device)
    coarse_head = None
    if cfg.targets.coarse_head:   # groups are renumbered every round, so the coarse head is always reset
        state["targets"].coarse = build_targets(grouped_result(result, grouping), cfg.targets.targets,
                                                tau=cfg.targets.sharpen, balanced=cfg.targets.balanced)
        coarse_gen = torch.Generator().manual_seed(derive_seed(cfg.run.seed, "coarse-head", state["round"]))
        coarse_head = new_head(ctx.model.embed_dim, head_outputs(cfg), coarse_gen).to(ctx.device)
    install_head(ctx, head, coarse_head)
    state["warm_state"], state["prev_labels"] = result.state, result.labels
    state["reduce_state"], state["predictor"] = reduction.state, result.predictor
    state["round"] += 1
    state["last_relabel"] = epoch
    return train_feats, info


def _cluster_round(ctx: RunContext, state: dict
                   ) -> tuple[torch.Tensor, ClusterResult, Reduction, Grouping | None, dict]:
    """Features -> reducer (PCA whitening or UMAP) -> clustering -> grouping (``--group``) -> metrics.

    Returns (trunk features, clustering result, reduction (with the reducer's warm state for the next round),
    the grouping of the components or None, record fields). ``cluster_seconds`` covers the reducer, the backend
    and the grouping; ``reduce_seconds``, ``fit_seconds`` and ``group_seconds`` split it. With a grouping the record
    reports the clusters a user is shown (eval protocol: a method that over-clusters on purpose reports both counts
    and scores the clusters shown): ``k_active`` and NMI/ACC/ARI/purity are those of the groups, ``k_fine`` and
    ``nmi_fine`` those of the components (the targets of the fine head).
    """
    cfg = ctx.cfg
    t0 = time.perf_counter()
    feats = _features(ctx, ctx.train_source, progress=cfg.run.progress and ctx.dist.is_main)
    t1 = time.perf_counter()
    space = clustered_features(ctx.model, cfg, feats, ctx.device)
    reduction = _reduce(ctx, space, seed=derive_seed(cfg.run.seed, "reduce", state["round"]),
                        warm_state=state.get("reduce_state"))
    x = reduction.points
    result = ctx.backend.fit(x, seed=derive_seed(cfg.run.seed, "cluster", state["round"]),
                             warm_state=state["warm_state"])
    if not math.isfinite(result.objective):
        raise FloatingPointError(f"the clustering objective ({ctx.backend.name}) became {result.objective}")
    t_group = time.perf_counter()
    # every process holds all N responsibilities (the backend gathers them), so each groups alike
    grouping = None if cfg.cluster.group == "none" else group_components(result, cfg.cluster.group,
                                                                          cfg.cluster.group_cut)
    t2 = time.perf_counter()
    info = {"round": state["round"], "extract_seconds": t1 - t0, "cluster_seconds": t2 - t1,
            "reduce_seconds": reduction.seconds, "reduce_info": reduction.info,
            "fit_seconds": result.seconds, "objective": result.objective, "n_iter": result.n_iter,
            "history": result.history, "k_active": result.k_active, "k_used": result.k_used,
            "k_eff": result.k_eff, "weights": np.sort(result.weights)[::-1][: max(result.k_used, 1)],
            "backend_info": result.info, "feature_dim": int(x.shape[1])}
    shown = result.labels
    if grouping is not None:
        shown = grouping.labels
        info.update(k_active=grouping.k_active, k_fine=result.k_active, k_groups=grouping.n_groups,
                    group_seconds=t2 - t_group, group_merges=len(grouping.scores))
    labels_true = ctx.train_set.labels
    if labels_true is not None:
        scores = metrics.cluster_metrics(labels_true, shown, result.weights if grouping is None else grouping.weights)
        info.update({k: scores[k] for k in ("nmi", "ari", "acc", "purity")})
        if grouping is not None:
            info["nmi_fine"] = metrics.nmi(labels_true, result.labels)
    if state["prev_labels"] is not None:
        info["nmi_prev"] = metrics.nmi(state["prev_labels"], result.labels)
    return feats, result, reduction, grouping, info


def _reduce(ctx: RunContext, space: torch.Tensor, *, seed: int, warm_state: dict | None) -> Reduction:
    """The reducer on this process's rows; a reducer that needs every row at once (UMAP) gets them all on every
    process (the same computation everywhere, same seed) and each keeps its own rows of the result."""
    if not ctx.dist.active or ctx.reducer.shardable:
        return ctx.reducer.reduce(space, seed=seed, warm_state=warm_state)
    start, stop = ctx.dist.shard(len(ctx.train_source))
    reduction = ctx.reducer.reduce(ctx.dist.gather_rows(space), seed=seed, warm_state=warm_state)
    return dataclasses.replace(reduction, points=reduction.points[start:stop])


def _snapshot_and_lineage(rundir: RunDir, round_idx: int, epoch: int, result: ClusterResult) -> None:
    """Save the round's snapshot and, from round 1 on, its lineage against the previous round's snapshot."""
    if isinstance(rundir, ReadOnlyRunDir):   # rank 0 writes both
        return
    rundir.save_snapshot(round_idx, result.labels, result.resp_values, result.resp_index, result.weights)
    prev = rundir.snapshot_path(round_idx - 1)
    if round_idx > 0 and prev.exists():
        with np.load(prev) as old:
            events = round_lineage(old, result)
        rundir.log({"epoch": epoch, "round": round_idx, **events}, rundir.lineage_path)


def _features(ctx: RunContext, source: BatchSource, progress: bool = False) -> torch.Tensor:
    """Trunk features (n, F) of this process's shard of ``source`` (all of it in one process)."""
    rows = ctx.dist.shard(len(source)) if ctx.dist.active else None
    return source.features(ctx.model.trunk, ctx.mean, ctx.std, batch_size=ctx.cfg.features.extract_batch,
                           rows=rows, progress=progress, desc="extract")


def _knn(ctx: RunContext, train_feats: torch.Tensor | None = None) -> float:
    """kNN accuracy of the current trunk on the eval split (``train_feats``: this epoch's, if extracted).

    Several processes extract their shards, gather them, and rank 0 scores (its answer is sent to the others).
    """
    if train_feats is None:
        train_feats = _features(ctx, ctx.train_source)
    test_feats = _features(ctx, ctx.eval_source)
    train_feats, test_feats = ctx.dist.gather_rows(train_feats), ctx.dist.gather_rows(test_feats)
    accuracy = None
    if ctx.dist.is_main:
        accuracy = metrics.knn_accuracy(train_feats, ctx.train_set.labels, test_feats, ctx.eval_set.labels,
                                        k=ctx.cfg.run.knn_k)
    return ctx.dist.broadcast_object(accuracy)


def _final_record(ctx: RunContext, state: dict) -> dict:
    """Cluster and evaluate the final trunk once more; logged as ``phase: "final"`` (epoch = epochs)."""
    done = ctx.dist.broadcast_object([r for r in ctx.rundir.read_metrics() if r.get("phase") == "final"])
    if done:
        return done[-1]
    epochs = ctx.cfg.train.epochs
    feats, result, reduction, grouping, info = _cluster_round(ctx, dict(state))
    record = {"epoch": epochs, "phase": "final", **info}
    if ctx.eval_set is not None:
        record["knn"] = _knn(ctx, feats)
    _snapshot_and_lineage(ctx.rundir, state["round"], epochs, result)
    _save_final(ctx, reduction, result, grouping)
    return ctx.rundir.log(record)


def _save_final(ctx: RunContext, reduction: Reduction, result: ClusterResult, grouping: Grouping | None = None) -> None:
    """Write ``final.pt`` (verified checkpoint, sha256 manifest) before the final record is logged, so a run whose
    final record exists always has it."""
    if not ctx.dist.is_main:
        return
    from bayes_dc.version import __version__
    save_checkpoint({"format": FINAL_FORMAT, "bayes_dc_version": __version__, "config": ctx.cfg.to_dict(),
                     "model": ctx.model.state_dict(), "reduce_state": reduction.state, "predictor": result.predictor,
                     "labels": result.labels, "weights": result.weights,
                     "component_group": None if grouping is None else grouping.component_group,
                     "input": {"channels": int(ctx.train_set.num_channels), "image_size": int(ctx.train_set.image_size),
                               "mean": ctx.mean.cpu().float(), "std": ctx.std.cpu().float()}},
                    ctx.rundir.path / FINAL_CHECKPOINT, keep_previous=False)


__all__ = ["RunContext", "RunDiverged", "RunInterrupted", "run", "setup", "validate", "check_sizes", "load_split",
           "derive_seed", "resolve_device", "permute_head", "install_head", "build_run_model", "clustered_features",
           "Distributed"]
