"""Data-parallel training over several processes (``torchrun``), with the loss of the global batch.

``vsekit train`` runs unchanged under ``torchrun``: :func:`init_from_env` reads the variables torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), starts the process group (NCCL on CUDA, gloo on the CPU) and
gives every process its device (``cuda:LOCAL_RANK`` for ``device=auto``/``cuda``).

What makes N processes × batch b train exactly like 1 process × batch N·b:

* **Global batches.** ``batch_size`` is the global batch. Every process draws the same seeded batch order
  and takes its contiguous slice of each batch (:func:`shard_sizes`; slices differ by at most one sample
  when N does not divide the batch, and the loss weights every sample the same).
* **Global loss.** The embeddings (and image ids) of all processes are gathered with an autograd-aware
  all-gather (:func:`gather_with_grad`): each process scores its own queries against every candidate of
  the global batch (hardest negatives mined over all of it) and the gradient of every gathered row flows
  back to the process that computed it. Summed over the processes, the shares are the single-process loss.
  DDP averages gradients, so each process back-propagates ``world_size ×`` its share.
* **BatchNorm** over the global batch: :func:`~vsekit.training.batchnorm.convert_batchnorm` swaps every
  BatchNorm layer for :class:`~vsekit.training.batchnorm.CrossRankBatchNorm`, whose training-mode statistics
  are reduced over the processes (works with gloo and NCCL; frozen / eval-mode BatchNorm, e.g. in
  pretrained backbones, is untouched).
* **Augmentation draws** come from streams seeded by (seed, rank, step) (:func:`rank_seed`), so a resumed
  run repeats them without any saved per-process RNG state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = [
    "DistContext",
    "SeededCollate",
    "Shard",
    "all_gather_nograd",
    "all_reduce_with_grad",
    "barrier",
    "broadcast_object",
    "env_rank",
    "gather_objects",
    "gather_with_grad",
    "init_from_env",
    "rank_seed",
    "reduce_sum",
    "shard_sizes",
    "shutdown",
    "wrap_ddp",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run (the single-process default: rank 0 of 1).

    Attributes:
        rank: global rank of this process.
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files, logs and evaluates."""
        return self.rank == 0


@dataclass(frozen=True)
class Shard:
    """This process's slice of one global batch.

    Attributes:
        rank: this process's rank.
        sizes: the slice size of every rank, in rank order (their sum is the global batch).
    """

    rank: int
    sizes: tuple[int, ...]

    @property
    def offset(self) -> int:
        """Position of this slice in the global batch."""
        return sum(self.sizes[: self.rank])

    @property
    def size(self) -> int:
        """Number of samples in this slice."""
        return self.sizes[self.rank]

    @property
    def total(self) -> int:
        """Size of the global batch."""
        return sum(self.sizes)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}: expected an integer, got {value!r}") from None


def env_rank() -> int:
    """This process's rank as torchrun announces it (``RANK``; 0 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def _device_for(device: torch.device, local_rank: int, world_size: int) -> torch.device:
    if world_size > 1 and device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: distributed training runs on cpu or cuda, got {str(device)!r}")
    if device.type == "cuda" and device.index is None:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"device: LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "start at most one process per GPU (torchrun --nproc-per-node)"
            )
        return torch.device("cuda", local_rank)
    return device


def init_from_env(device: torch.device) -> tuple[DistContext, torch.device, bool]:
    """Join (or start) the process group of a ``torchrun`` launch.

    An already initialised process group (started by the caller) is used as it is. Otherwise, when
    ``WORLD_SIZE`` > 1, the group is started here from torchrun's ``env://`` rendezvous: NCCL when
    ``device`` is CUDA, gloo on the CPU.

    Args:
        device: the resolved device of the config (``cuda`` without an index becomes ``cuda:LOCAL_RANK``).

    Returns:
        ``(context, device, started)``: this process's :class:`DistContext`, its device, and whether this
        call started the group (then :func:`shutdown` should end it).

    Raises:
        ConfigError: malformed torchrun variables, an unsupported device, or too few GPUs.
    """
    if dist.is_available() and dist.is_initialized():
        ctx = DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
        return ctx, _device_for(device, ctx.local_rank, ctx.world_size), False
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext(), device, False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = _device_for(device, local_rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    return DistContext(rank, world, local_rank), device, True


def shutdown(started: bool) -> None:
    """End the process group when :func:`init_from_env` started it (``started``)."""
    if started and dist.is_initialized():
        dist.destroy_process_group()


def shard_sizes(n: int, world_size: int) -> tuple[int, ...]:
    """Slice sizes of a global batch of ``n`` over ``world_size`` ranks: contiguous, as even as possible.

    >>> shard_sizes(10, 4)
    (3, 3, 2, 2)

    Raises:
        ConfigError: when a rank would get no sample (``n < world_size``).
    """
    if n < world_size:
        raise ConfigError(
            f"batch_size: a global batch of {n} cannot give each of the {world_size} processes a sample; "
            f"use batch_size >= {world_size} (and a training set at least that large)"
        )
    base, extra = divmod(n, world_size)
    return tuple(base + (1 if r < extra else 0) for r in range(world_size))


# ----------------------------------------------------------------------------------------------
# collectives
#
# The loss's collectives (gathers, BatchNorm reductions, and their backward passes) run in a process
# group of their own. DDP all-reduces gradient buckets on the default group while the backward pass runs,
# as buckets become ready; were the loss's backward collectives on that group too, a graph whose shape
# depends on the data (e.g. per-length GPO weights) could interleave the two differently on two ranks.

_LOSS_GROUP: tuple[Any, Any] | None = None  # (default group it belongs to, the group)


def _loss_group() -> Any:  # noqa: ANN401
    """The process group of the loss's collectives (created on first use, by every rank at the same point)."""
    global _LOSS_GROUP
    world = dist.group.WORLD
    if _LOSS_GROUP is None or _LOSS_GROUP[0] is not world:
        _LOSS_GROUP = (world, dist.new_group())
    return _LOSS_GROUP[1]


def _gather_padded(x: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """All-gather of ``x`` (this rank's ``sizes[rank]`` rows) into the ``sum(sizes)`` rows of every rank."""
    longest = max(sizes)
    if x.shape[0] < longest:
        x = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous(), group=_loss_group())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums, over the ranks, the gradients of this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: tuple[int, ...], rank: int) -> Tensor:  # noqa: ANN401
        ctx.sizes, ctx.rank = sizes, rank
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN401
        # every rank's loss share may depend on every row: the gradient of a row is the sum over ranks
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=_loss_group())
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_with_grad(x: Tensor, shard: Shard) -> Tensor:
    """Rows of every rank, concatenated in rank order, with gradients flowing back to their rank.

    Args:
        x: this rank's ``shard.size`` rows.
        shard: the slice sizes of all ranks (uneven sizes are padded for the transfer).

    Returns:
        The ``shard.total`` rows of the global batch. Back-propagating a loss share ``L_r`` on every rank
        gives each rank the gradient of ``sum_r L_r`` with respect to its own rows.
    """
    if x.shape[0] != shard.size:
        raise ValueError(f"gather_with_grad: expected {shard.size} rows on rank {shard.rank}, got {x.shape[0]}")
    return _GatherWithGrad.apply(x, shard.sizes, shard.rank)


def all_gather_nograd(x: Tensor, shard: Shard) -> Tensor:
    """Like :func:`gather_with_grad` without autograd (e.g. image ids)."""
    with torch.no_grad():
        return _gather_padded(x, shard.sizes)


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over the ranks whose backward sums the gradients over the ranks too."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # noqa: ANN401
        out = x.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=_loss_group())
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # noqa: ANN401
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=_loss_group())
        return grad


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """``sum_r x_r`` on every rank; gradients reach every ``x_r`` (the sum over ranks of their gradient)."""
    return _AllReduceWithGrad.apply(x)


def reduce_sum(x: Tensor) -> Tensor:
    """``sum_r x_r`` on every rank, without autograd (a copy; ``x`` is untouched)."""
    out = x.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_max(values: list[int], device: torch.device) -> list[int]:
    """The element-wise maximum of ``values`` over the ranks, on every rank (``values`` without a process group).

    A collective on ``device`` whose result the host reads: it waits for the device.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return list(values)
    out = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return [int(v) for v in out.tolist()]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` as it is without a process group)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` without a process group)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def rank_seed(seed: int, rank: int, *keys: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, rank, *keys)`` (e.g. the step).

    >>> rank_seed(0, 1, 5) == rank_seed(0, 1, 5) != rank_seed(0, 0, 5)
    True
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank), *(int(k) for k in keys)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class SeededCollate:
    """A collate function whose random draws (e.g. random crops of raw images) come from a stream seeded by
    ``(seed, rank, epoch, caption ids of the batch)``: a resumed run draws the same, whether batches are
    collated in the main process or in DataLoader workers. The caller's global RNG is left untouched.

    Args:
        collate: the collate function (e.g. a :class:`vsekit.data.Collator`); picklable.
        seed: the run's seed.
        rank: this process's rank.
        epoch: the epoch (0-based).
    """

    def __init__(self, collate: Any, seed: int, rank: int, epoch: int) -> None:  # noqa: ANN401
        self.collate, self.seed, self.rank, self.epoch = collate, seed, rank, epoch

    def __call__(self, samples: list[dict[str, Any]]) -> Any:  # noqa: ANN401
        ids = [int(s["caption_id"]) for s in samples]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(rank_seed(self.seed, self.rank, self.epoch, *ids))
            return self.collate(samples)


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` over ``module`` as vsekit trains it.

    ``static_graph=True``: the set of parameters that receive gradients is fixed for the life of the
    wrapper (DDP finds the unused ones, e.g. the never-applied second BatchNorm of the VSE∞ MLP or an
    instance classifier without instance loss, once, instead of searching the graph every step).
    Frozen modules (``requires_grad=False``) are left out when the wrapper is built, so the training loop
    builds a new wrapper whenever the set of frozen modules changes (``optim.freeze``).
    """
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(module, device_ids=device_ids, static_graph=True)
