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
by :func:`setup` into a :class:`~bayes_dc.context.RunContext` that every stage takes; what changes from epoch
to epoch (round, targets, warm state, ...) is the ``state`` dict that checkpoints store.

Randomness is derived from (seed, purpose, epoch) only, so a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import time
import typing
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .augment import Augmenter
from .clustering import BACKENDS, ClusterResult, make_backend
from .config import Config, HeadPolicy, RelabelRule
from .context import RunContext
from .data import load_dataset
from .features import extract_features
from .lineage import round_lineage
from .models import ARCHS, build_model, new_head
from .reduce import Reduction, make_reducer
from .runlog import RunDir
from .targets import TARGET_KINDS, Targets, build_targets, sample_epoch
from .train import SwappedViews, train_epoch

HEAD_POLICIES = typing.get_args(HeadPolicy)
RELABEL_RULES = typing.get_args(RelabelRule)


def relabel_due(tr, epoch: int, last_relabel: int | None, agreement: float | None) -> bool:
    """Whether epoch ``epoch`` starts with a new clustering.

    ``fixed``: every ``relabel_every`` epochs (DeepCluster: 1). ``adaptive``: once the head agreed with its
    targets on at least ``relabel_agreement`` of the previous epoch's samples (the targets are learned, so
    they teach nothing new), and at the latest ``relabel_max_gap`` epochs after the last relabel.
    """
    if last_relabel is None:
        return True
    gap = epoch - last_relabel
    if tr.relabel == "fixed":
        return gap >= tr.relabel_every
    return gap >= tr.relabel_max_gap or (agreement is not None and agreement >= tr.relabel_agreement)


def derive_seed(seed: int, *parts: str | int) -> int:
    """A 31-bit seed for one purpose and step, derived from the run seed (numpy SeedSequence hashing)."""
    words = [seed] + [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") % (2**32) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0] % (2**31 - 1))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown --device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def validate(cfg: Config) -> None:
    """Reject a bad configuration before anything is written (clear message naming the option)."""
    c, t, tr = cfg.cluster, cfg.targets, cfg.train
    if cfg.model.arch not in ARCHS:
        raise ValueError(f"unknown --arch {cfg.model.arch!r}; choose one of {sorted(ARCHS)}")
    if c.prior not in BACKENDS:
        raise ValueError(f"unknown --prior {c.prior!r}; choose one of {sorted(BACKENDS)}")
    if t.targets not in TARGET_KINDS:
        raise ValueError(f"unknown --targets {t.targets!r}; choose one of {list(TARGET_KINDS)}")
    if t.head not in HEAD_POLICIES:
        raise ValueError(f"unknown --head {t.head!r}; choose one of {list(HEAD_POLICIES)}")
    if t.head == "keep" and c.prior == "kmeans":
        raise ValueError("--head keep needs component identities that persist across rounds; k-means clusters "
                         "are renumbered every run, so use --head reset with --prior kmeans (or --prior dp)")
    if c.prior == "kmeans" and t.targets != "hard":
        raise ValueError(f"--targets {t.targets} needs responsibilities; k-means gives hard labels only. "
                         "Use --targets hard with --prior kmeans, or --prior dp")
    if tr.relabel not in RELABEL_RULES:
        raise ValueError(f"unknown --relabel {tr.relabel!r}; choose one of {list(RELABEL_RULES)}")
    if not 0 < tr.relabel_agreement <= 1 or tr.relabel_max_gap < 1:
        raise ValueError("--relabel-agreement must be in (0, 1] and --relabel-max-gap >= 1")
    if tr.epochs < 1 or tr.relabel_every < 1:
        raise ValueError(f"--epochs ({tr.epochs}) and --relabel-every ({tr.relabel_every}) must be >= 1")
    if tr.batch_size < 2:
        raise ValueError(f"--batch-size must be >= 2 (batch norm), got {tr.batch_size}")
    if tr.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {tr.lr}")
    if tr.two_views and (c.prior != "dp" or cfg.features.reduce == "umap"):
        raise ValueError("--two-views assigns augmented views to the round's clusters on the fly, which needs the DP "
                         "posterior (--prior dp) and a clustering space new points can be mapped into (--reduce pca "
                         "or none, not umap)")


def _head_outputs(cfg: Config) -> int:
    return cfg.cluster.k if cfg.cluster.prior == "kmeans" else cfg.cluster.truncation


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


def _head_optimizer(cfg: Config, head: torch.nn.Module) -> torch.optim.Optimizer:
    tr = cfg.train
    return torch.optim.SGD(head.parameters(), lr=tr.head_lr or tr.lr, momentum=tr.momentum,
                           weight_decay=tr.weight_decay)


def install_head(ctx: RunContext, head: torch.nn.Linear) -> None:
    """Put ``head`` on the model, with a fresh optimiser (DeepCluster: momentum does not carry over)."""
    ctx.model.head = head
    ctx.head_opt = _head_optimizer(ctx.cfg, head)


def setup(cfg: Config) -> RunContext:
    """Check ``cfg``, load the data, build backend, model and optimisers, and open the run directory.

    Nothing is written before every check has passed. The model is initialised from the run seed.
    """
    validate(cfg)
    device = resolve_device(cfg.run.device)
    if cfg.run.threads:  # parallel runs on one machine must not each grab every core
        torch.set_num_threads(cfg.run.threads)
        import faiss
        faiss.omp_set_num_threads(cfg.run.threads)
    train_set, eval_set = _load_data(cfg)
    backend = make_backend(cfg.cluster, device)
    reducer = make_reducer(cfg)
    if cfg.cluster.prior == "kmeans" and cfg.cluster.k > len(train_set):
        raise ValueError(f"--k {cfg.cluster.k} exceeds the number of training images ({len(train_set)})")
    rundir = RunDir.open(cfg, device)  # first write happens only after every check above passed

    torch.manual_seed(derive_seed(cfg.run.seed, "init"))
    m = cfg.model
    model = build_model(m.arch, train_set.num_channels, sobel=m.sobel, width=cfg.width, num_outputs=_head_outputs(cfg),
                        projection_dim=m.projection_dim if cfg.features.cluster_on == "projection" else 0,
                        projection_hidden=m.projection_hidden, projection_l2=m.projection_l2).to(device)
    mean, std = train_set.mean_std()
    tr = cfg.train
    # the projection head belongs to the representation (kept across rounds), so it trains with the trunk
    trunk_params = list(model.trunk.parameters()) + (list(model.projection.parameters()) if model.projection else [])
    trunk_opt = torch.optim.SGD(trunk_params, lr=tr.lr, momentum=tr.momentum,
                                weight_decay=tr.weight_decay)
    return RunContext(cfg=cfg, device=device, train_set=train_set, eval_set=eval_set,
                      images=train_set.images.to(device),
                      eval_images=eval_set.images.to(device) if eval_set is not None else None,
                      mean=mean, std=std, model=model, trunk_opt=trunk_opt,
                      head_opt=_head_optimizer(cfg, model.head), backend=backend, reducer=reducer,
                      augmenter=Augmenter(tr.augment, padding=tr.crop_padding, scale=tr.crop_scale), rundir=rundir)


def _load_data(cfg: Config):
    """(training set, eval set or None). The eval set is dropped when either split has no labels."""
    d = cfg.data
    train_set = load_dataset(d.dataset, "train", root=d.data_root, subset=d.subset, seed=cfg.run.seed,
                             image_size=d.image_size, download=d.download)
    eval_set = None
    if d.eval_split != "none":
        try:
            eval_set = load_dataset(d.dataset, d.eval_split, root=d.data_root, subset=d.eval_subset,
                                    seed=cfg.run.seed, image_size=d.image_size, download=d.download)
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
    ckpt = ctx.rundir.load_checkpoint() if ctx.cfg.run.resume else None
    if ckpt is None:
        return _initial_state()
    ctx.model.load_state_dict(ckpt["model"])
    ctx.trunk_opt.load_state_dict(ckpt["trunk_opt"])
    ctx.head_opt.load_state_dict(ckpt["head_opt"])
    return ckpt["state"]


def _save_checkpoint(ctx: RunContext, state: dict) -> None:
    ctx.rundir.save_checkpoint({"model": ctx.model.state_dict(), "trunk_opt": ctx.trunk_opt.state_dict(),
                                "head_opt": ctx.head_opt.state_dict(), "state": state, "config": ctx.cfg.to_dict()})


def run(cfg: Config) -> dict:
    """Run (or resume) the experiment described by ``cfg``; return the final record."""
    ctx = setup(cfg)
    state = _restore(ctx)
    ctx.rundir.truncate_metrics(state["epoch"])
    if cfg.run.tensorboard:
        from .tblog import TensorBoardLogger
        ctx.tb = TensorBoardLogger(ctx.rundir.path)
    tr = cfg.train
    progress = _Progress(tr.epochs, state["epoch"], cfg.run.progress, ctx.rundir.path.name)
    for epoch in range(state["epoch"], tr.epochs):
        t_epoch = time.perf_counter()
        record = {"epoch": epoch, "phase": "train"}
        train_feats = None
        if relabel_due(tr, epoch, state["last_relabel"], state["agreement"]):
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
    progress.close()

    final = _final_record(ctx, state)
    if ctx.tb is not None:
        ctx.tb.log_record(final)
        ctx.tb.close()
    if cfg.run.figures:
        from .plots import plot_run
        plot_run(ctx.rundir.path)
    return final


def _relabel(ctx: RunContext, state: dict, epoch: int) -> tuple[torch.Tensor, dict]:
    """Cluster, record the round, and set up the next epochs' targets and head; advances ``state``.

    Returns (trunk features (N, F) of the training images, the record fields of the round).
    """
    cfg = ctx.cfg
    train_feats, result, reduction, info = _cluster_round(ctx, state)
    _snapshot_and_lineage(ctx.rundir, state["round"], epoch, result)
    if ctx.tb is not None:
        ctx.tb.log_clusters(epoch, ctx.train_set.images, result.labels, result.weights)
    state["targets"] = build_targets(result, cfg.targets.targets, tau=cfg.targets.sharpen,
                                     balanced=cfg.targets.balanced)
    gen = torch.Generator().manual_seed(derive_seed(cfg.run.seed, "head", state["round"]))
    if cfg.targets.head == "keep" and result.permutation is not None:
        head = permute_head(ctx.model.head, result.permutation, gen)
    else:
        head = new_head(ctx.model.embed_dim, _head_outputs(cfg), gen).to(ctx.device)
    install_head(ctx, head)
    state["warm_state"], state["prev_labels"] = result.state, result.labels
    state["reduce_state"], state["predictor"] = reduction.state, result.predictor
    state["round"] += 1
    state["last_relabel"] = epoch
    return train_feats, info


def _cluster_round(ctx: RunContext, state: dict) -> tuple[torch.Tensor, ClusterResult, Reduction, dict]:
    """Features -> reducer (PCA whitening or UMAP) -> clustering -> metrics.

    Returns (trunk features, clustering result, reduction (with the reducer's warm state for the next round),
    record fields). ``cluster_seconds`` covers the reducer and the backend; ``reduce_seconds`` and
    ``fit_seconds`` split it.
    """
    cfg = ctx.cfg
    t0 = time.perf_counter()
    feats = extract_features(ctx.model.trunk, ctx.images, ctx.mean, ctx.std, batch_size=cfg.features.extract_batch,
                             device=ctx.device, progress=cfg.run.progress, desc="extract")
    t1 = time.perf_counter()
    reduction = ctx.reducer.reduce(_clustered_features(ctx, feats), seed=derive_seed(cfg.run.seed, "reduce", state["round"]),
                                   warm_state=state.get("reduce_state"))
    x = reduction.points
    result = ctx.backend.fit(x, seed=derive_seed(cfg.run.seed, "cluster", state["round"]),
                             warm_state=state["warm_state"])
    t2 = time.perf_counter()
    info = {"round": state["round"], "extract_seconds": t1 - t0, "cluster_seconds": t2 - t1,
            "reduce_seconds": reduction.seconds, "reduce_info": reduction.info,
            "fit_seconds": result.seconds, "objective": result.objective, "n_iter": result.n_iter,
            "history": result.history, "k_active": result.k_active, "k_used": result.k_used,
            "k_eff": result.k_eff, "weights": np.sort(result.weights)[::-1][: max(result.k_used, 1)],
            "backend_info": result.info, "feature_dim": int(x.shape[1])}
    labels_true = ctx.train_set.labels
    if labels_true is not None:
        scores = metrics.cluster_metrics(labels_true, result.labels, result.weights)
        info.update({k: scores[k] for k in ("nmi", "ari", "acc", "purity")})
    if state["prev_labels"] is not None:
        info["nmi_prev"] = metrics.nmi(state["prev_labels"], result.labels)
    return feats, result, reduction, info


@torch.no_grad()
def _clustered_features(ctx: RunContext, feats: torch.Tensor) -> torch.Tensor:
    """What ``--cluster-on`` clusters: the trunk features (N, F) themselves, or their projection (N, P) (eval mode,
    in chunks)."""
    projection = ctx.model.projection
    if ctx.cfg.features.cluster_on == "trunk" or projection is None:
        return feats
    was_training = projection.training
    projection.eval()
    out = torch.cat([projection(chunk) for chunk in feats.split(ctx.cfg.features.extract_batch)])
    projection.train(was_training)
    return out


def _snapshot_and_lineage(rundir: RunDir, round_idx: int, epoch: int, result: ClusterResult) -> None:
    """Save the round's snapshot and, from round 1 on, its lineage against the previous round's snapshot."""
    rundir.save_snapshot(round_idx, result.labels, result.resp_values, result.resp_index, result.weights)
    prev = rundir.snapshot_path(round_idx - 1)
    if round_idx > 0 and prev.exists():
        with np.load(prev) as old:
            events = round_lineage(old, result)
        rundir.log({"epoch": epoch, "round": round_idx, **events}, rundir.lineage_path)


def _knn(ctx: RunContext, train_feats: torch.Tensor | None = None) -> float:
    """kNN accuracy of the current trunk on the eval split (``train_feats``: this epoch's, if extracted)."""
    bs = ctx.cfg.features.extract_batch
    if train_feats is None:
        train_feats = extract_features(ctx.model.trunk, ctx.images, ctx.mean, ctx.std, batch_size=bs,
                                       device=ctx.device)
    test_feats = extract_features(ctx.model.trunk, ctx.eval_images, ctx.mean, ctx.std, batch_size=bs,
                                  device=ctx.device)
    return metrics.knn_accuracy(train_feats, ctx.train_set.labels, test_feats, ctx.eval_set.labels,
                                k=ctx.cfg.run.knn_k)


def _final_record(ctx: RunContext, state: dict) -> dict:
    """Cluster and evaluate the final trunk once more; logged as ``phase: "final"`` (epoch = epochs)."""
    done = [r for r in ctx.rundir.read_metrics() if r.get("phase") == "final"]
    if done:
        return done[-1]
    epochs = ctx.cfg.train.epochs
    feats, result, _, info = _cluster_round(ctx, dict(state))
    record = {"epoch": epochs, "phase": "final", **info}
    if ctx.eval_set is not None:
        record["knn"] = _knn(ctx, feats)
    _snapshot_and_lineage(ctx.rundir, state["round"], epochs, result)
    return ctx.rundir.log(record)


__all__ = ["RunContext", "run", "setup", "validate", "derive_seed", "resolve_device", "permute_head", "install_head"]
