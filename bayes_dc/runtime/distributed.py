"""Several processes, one run: torchrun + ``torch.distributed`` (gloo on CPU, NCCL on GPU) and DDP.

    torchrun --standalone --nproc-per-node 2 experiments/run.py --prior dp ...

:class:`Distributed` is the one object the pipeline asks about ranks. In one process (no ``WORLD_SIZE`` in the
environment) it is ``Distributed()``: rank 0 of 1, and every helper is the identity, so single-process runs do
exactly what they did before any of this existed. Under torchrun (:func:`init_from_env`) each process:

* extracts the features of its own contiguous shard of the images (:meth:`Distributed.shard`);
* feeds the sums of the PCA whitening and of the clustering (sufficient statistics, move scores) through
  :meth:`Distributed.all_reduce`, so every rank holds the same projection and the same posterior;
* trains on its share of every global batch (:meth:`Distributed.share_batches`): every rank draws the same
  global index list with the same generator and takes rows ``rank * B/W .. (rank + 1) * B/W`` of each batch of
  B, so W processes see the batches one process sees; DDP averages the gradients and synchronised batch norm
  (``torch.nn.SyncBatchNorm``, :class:`CPUSyncBatchNorm` on the CPU) normalises with the statistics of the whole
  global batch, so a W-process run follows the 1-process run up to
  the order of float sums;
* leaves the run directory, logs and checkpoints to rank 0 (``RunDir.open(write=False)`` elsewhere).

References: PyTorch DDP notes (``torch.nn.parallel.DistributedDataParallel``), torchrun's environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).
"""
from __future__ import annotations

import datetime
import gc
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT = datetime.timedelta(minutes=30)   # a rank waits this long at a collective before the run fails


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: ``rank`` of ``world`` (``local_rank`` on its node).

    Every collective helper is the identity when ``world == 1`` and needs ``torch.distributed`` initialised
    (:func:`init_from_env`) otherwise.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory."""
        return self.rank == 0

    # ---- collectives ---------------------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over the ranks, as a new tensor on its device (the input is left alone); the input
        itself in one process. A CPU tensor under NCCL travels through this rank's GPU."""
        if not self.active:
            return tensor
        out = tensor.to(self.collective_device, copy=True)
        dist.all_reduce(out)
        return out.to(tensor.device)

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's ``rows`` (M_r, ...) concatenated in rank order, on every rank, on ``rows``' device; M_r may
        differ."""
        if not self.active:
            return rows
        device = self.collective_device
        sizes = self.row_counts(rows.shape[0])
        # all_gather needs equal shapes: pad to the largest shard, drop the padding after
        dtype = torch.uint8 if rows.dtype == torch.bool else rows.dtype   # NCCL has no bool
        padded = torch.zeros((max(sizes), *rows.shape[1:]), dtype=dtype, device=device)
        padded[: rows.shape[0]] = rows.to(device, dtype)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(rows.device, rows.dtype)

    def row_counts(self, rows_here: int) -> list[int]:
        """Every rank's number of rows (world,), in rank order, given this rank's."""
        if not self.active:
            return [int(rows_here)]
        sizes = torch.zeros(self.world, dtype=torch.int64)
        sizes[self.rank] = rows_here
        return self.all_reduce(sizes).tolist()

    def gather_array(self, rows: np.ndarray) -> np.ndarray:
        """:meth:`gather_rows` for a numpy array (gathered through a tensor on the collective's device)."""
        if not self.active:
            return rows
        tensor = torch.from_numpy(np.ascontiguousarray(rows)).to(self.collective_device)
        return self.gather_rows(tensor).cpu().numpy()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled; for small things: centroids, flags, records)."""
        if not self.active:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.collective_device)
        return box[0]

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on at least one rank (the same answer on every rank)."""
        if not self.active:
            return flag
        return bool(self.all_reduce(torch.tensor([float(flag)], device=self.collective_device)).item() > 0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @property
    def collective_device(self) -> torch.device:
        """Where small tensors of a collective live: NCCL needs them on this rank's GPU, gloo on the CPU."""
        if self.active and dist.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    # ---- who does what --------------------------------------------------------------------------------------
    def bounds(self, n: int) -> list[int]:
        """Row boundaries (world + 1,) of the contiguous shards of n rows: rank r holds ``bounds[r]:bounds[r + 1]``
        (sizes differ by at most one, the first ``n % world`` shards one larger)."""
        return [int(b) for b in np.cumsum([0] + [len(part) for part in np.array_split(np.arange(n), self.world)])]

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's rows ``(start, stop)`` of n."""
        b = self.bounds(n)
        return b[self.rank], b[self.rank + 1]

    def share_batches(self, indices: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int, list[tuple[int, int]]]:
        """This rank's part of every global batch of the epoch's index list.

        Args:
            indices: (S,) the epoch's global index list, the same on every rank.
            batch_size: B, the global batch size; a multiple of ``world`` (:func:`check_batch_size`).
        Returns:
            (this rank's indices in order, its batch size B / W, and per step ``(offset, global size)``: where its
            rows start in the global batch, and how many rows that batch has). Full batches give every rank
            B / W rows; the last, shorter one is split as evenly as possible, and dropped on every rank (with a
            warning) when it has fewer rows than ranks, since a rank cannot train on an empty batch.
            In one process: ``(indices, B, [(0, len(batch)) ...])``.
        """
        n = indices.shape[0]
        if not self.active:
            return indices, batch_size, [(0, min(batch_size, n - s)) for s in range(0, n, batch_size)]
        local = batch_size // self.world
        full = n // batch_size
        parts = [indices[: full * batch_size].view(full, batch_size)[:, self.rank * local:(self.rank + 1) * local]
                 .reshape(-1)]
        steps = [(self.rank * local, batch_size)] * full
        rest = n - full * batch_size
        if rest >= self.world:
            b = self.bounds(rest)
            parts.append(indices[full * batch_size + b[self.rank]: full * batch_size + b[self.rank + 1]])
            steps.append((b[self.rank], rest))
        elif rest >= 2:   # one process would train on it; W processes cannot split it
            warnings.warn(f"the epoch's last batch of {rest} images is dropped: it cannot be split over {self.world} "
                          f"processes (set --epoch-samples to a multiple of --batch-size to keep every image)",
                          stacklevel=2)
        return torch.cat(parts), local, steps


def check_batch_size(batch_size: int, world: int) -> None:
    """Refuse a global batch that the ranks cannot share equally (names the option and the fix)."""
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} is not divisible by the {world} processes of this torchrun; each "
                         f"process trains on batch_size / processes images per step, so pass a multiple of {world}")


def env_world() -> int:
    """WORLD_SIZE set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """``--device`` -> a torch device; under torchrun every process takes GPU ``local_rank`` (auto / cuda).

    Raises ValueError for an unknown name, a CUDA device torch cannot see, or a fixed ``cuda:N`` under torchrun.
    """
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown --device {name!r}; choose auto, cpu or cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but torch sees no CUDA device; use --device cpu or auto")
    if name.startswith("cuda:") and world > 1:
        raise ValueError(f"--device {name} under torchrun: every process uses GPU LOCAL_RANK; pass --device cuda "
                         f"(or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if name == "cuda" and world > 1:
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_from_env(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun set up (env:// rendezvous), or stay alone when not under torchrun.

    Backend: NCCL when the device is a GPU, gloo on the CPU. Returns (this process's :class:`Distributed`, its
    device). Calling it again in a process that has joined returns the same answer.
    """
    world = env_world()
    if world == 1:
        return Distributed(), resolve_device(device_name)
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun "
                         f"(torchrun --nproc-per-node {world} experiments/run.py ...)")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_name, local_rank, world)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        join_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return Distributed(rank=rank, world=world, local_rank=local_rank), device


def join_group(backend: str, **kwargs: Any) -> None:
    """``dist.init_process_group(backend, **kwargs)``, in a way that lets :func:`shutdown` free the group.

    ``torch.distributed.nn.functional`` binds the default group as the default argument of its functions when it is
    first imported, which DDP does when it is built; imported after the group exists, it would hold the group for
    the rest of the process. Imported here, before, it binds None.
    """
    import torch.distributed.nn  # noqa: F401

    dist.init_process_group(backend, **kwargs)


def shutdown() -> None:
    """Leave the process group and free it (a no-op in one process). Drop the DDP wrappers first: they hold it.

    Freeing the group joins its worker threads here, while the interpreter is alive. Left to interpreter exit, a
    gloo worker still releasing the tensors of the last collective (on rank 1 the broadcast of the final kNN score)
    waits for the GIL into finalisation, which ends the thread inside a C++ destructor: ``terminate called without
    an active exception``, SIGABRT after a finished run. A barrier would not do: the worker releases a collective's
    tensors after the collective has completed. (:func:`join_group` keeps torch from pinning the group.)
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    group = dist.group.WORLD
    dist.destroy_process_group()
    gc.collect()   # DDP wrappers (one per head) are reference cycles that hold the group until collected
    # the last reference: its binding releases the GIL while gloo's destructor joins the worker threads
    del group


# ---- the model ----------------------------------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the gradients (as in torch's SyncBatchNorm)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the whole global batch for processes on the CPU (gloo), where ``torch.nn.SyncBatchNorm``
    refuses to run (and DDP refuses to wrap it).

    In training with several processes: mean and biased variance of the global batch (two passes, from all-reduced
    sums whose gradients are all-reduced back) normalise, the unbiased variance enters the running estimate, as in
    torch's SyncBatchNorm. Otherwise (eval mode, one process) plain batch norm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() // input.shape[1]], dtype=input.dtype)
        totals = _AllReduceSum.apply(torch.cat([input.sum(dims), count]))          # (C + 1,)
        n = totals[-1].detach()
        mean = totals[:-1] / n                                                        # (C,)
        centred = input - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n                  # (C,) biased
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=factor)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm*d of ``module`` normalising over the global batch (weights and running statistics kept):
    ``torch.nn.SyncBatchNorm`` on a GPU, :class:`CPUSyncBatchNorm` on the CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for sub in module.modules():
        if isinstance(sub, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            sub.__class__ = CPUSyncBatchNorm   # same attributes and state; only the forward differs
    return module


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (its batch norms already synchronised: :func:`convert_sync_batchnorm`).

    DDP registers the parameters it reduces when it is built, so a model whose head was replaced (every relabel)
    must be wrapped again; wrapping broadcasts rank 0's parameters and buffers, which the ranks share anyway.
    """
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


__all__ = ["CPUSyncBatchNorm", "Distributed", "check_batch_size", "convert_sync_batchnorm", "env_world",
           "init_from_env", "join_group", "resolve_device", "shutdown", "wrap_ddp"]
