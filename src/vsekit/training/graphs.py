"""The training step at static shapes, replayed as CUDA graphs (``cuda_graphs=true``).

A CUDA graph replays a recorded sequence of kernels on the same memory, so every tensor of the step must keep
its shape and address from one step to the next. :class:`GraphedSteps` gets there in three parts:

* **buckets**: a batch's captions are padded to the next width of ``graph_caption_buckets`` (past the last, to a
  multiple of it) and its feature sets to the next of ``graph_set_buckets`` (:func:`bucket_width`). The encoders
  read only the first ``length`` positions of each row, so the padding changes no value of the loss: only the
  shapes of the random draws of augmentation, which are drawn over the padded width.
* **static buffers**: one :class:`StaticBatch` per shape (batch size, caption width, set width) that every batch
  of that shape is copied into, and a 0-d loss weight.
* **capture**: on CUDA, the first batch of a shape runs the step a few times on a side stream (what torch
  requires before a capture), the weights, buffers, optimizer state and RNG are put back as they were
  (:class:`Snapshot`), and the step is captured once: forward, loss, backward, clipping and, for Adam and AdamW
  (``capturable=True``, learning rates as device tensors refreshed before each replay), the optimizer update.
  Other optimizers update eagerly after the replay. Later batches of that shape are copied in and replayed.

On a CPU nothing is captured: the same buffers, bucketing, copy-in, warm-up and restore run, and the step runs
eagerly on the buffers. That is what the tests check (the same losses with and without bucket padding); the
capture itself needs CUDA.

Data-parallel training (DDP over NCCL) needs what torch documents for graphs: NCCL 2.9.6 or newer (collectives
inside the graph), ``TORCH_NCCL_ASYNC_ERROR_HANDLING=0`` before the process group starts, the DDP wrapper built
on a side stream, and at least 11 DDP iterations before a capture (:data:`DDP_WARMUP_STEPS`). Every rank must
capture at the same step, so the ranks agree on each step's shape (an all-reduce of the widths, read by the host).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Batch
from ..errors import ConfigError, first_line

WARMUP_STEPS = 3
"""Steps run on a side stream before a capture (single process)."""
DDP_WARMUP_STEPS = 11
"""Steps run before a capture under DistributedDataParallel (torch's documented minimum)."""

StepBody = Callable[[Batch, Tensor, Any], Tensor]
"""``body(batch, weight, context) -> loss``: forward, loss times ``weight``, backward and clipping of one step (no
optimizer update); ``context`` is what :meth:`GraphedSteps.__call__` was given (e.g. the data-parallel shard)."""


def bucket_width(length: int, buckets: Sequence[int]) -> int:
    """The padded width of a batch whose longest row is ``length``: the smallest of ``buckets`` (increasing) that
    holds it, or past the last bucket the next multiple of the last. Without buckets, ``length`` itself."""
    if length < 1:
        raise ValueError(f"bucket_width: expected a positive length, got {length}")
    for width in buckets:
        if length <= width:
            return int(width)
    if not buckets:
        return length
    last = int(buckets[-1])
    return -(-length // last) * last


def pad_width(x: Tensor, width: int, value: float | int = 0) -> Tensor:
    """``x`` (B×L×…) padded with ``value`` along dim 1 to ``width`` columns (``x`` itself when already that wide)."""
    extra = width - x.shape[1]
    if extra < 0:
        raise ValueError(f"pad_width: {x.shape[1]} columns do not fit in {width}")
    if extra == 0:
        return x
    return torch.cat([x, x.new_full((x.shape[0], extra, *x.shape[2:]), value)], dim=1)


BATCH_FIELDS = ("images", "image_lengths", "captions", "caption_lengths", "image_ids", "caption_ids")


@dataclass(frozen=True)
class Buckets:
    """The widths batches are padded to, and the id captions are padded with."""

    captions: tuple[int, ...]
    sets: tuple[int, ...] = ()
    pad_id: int = 0

    def shape_of(self, batch: Batch) -> tuple[int, int, int]:
        """``(batch size, caption width, set width)`` of ``batch`` once padded (set width 0 for pixel inputs)."""
        sets = bucket_width(batch.images.shape[1], self.sets) if batch.images.dim() == 3 else 0
        return len(batch), bucket_width(batch.captions.shape[1], self.captions), sets

    def pad(self, batch: Batch, shape: tuple[int, int, int] | None = None) -> Batch:
        """``batch`` with its captions and feature sets padded to ``shape`` (default: its own buckets)."""
        _, caption_width, set_width = shape or self.shape_of(batch)
        images = pad_width(batch.images, set_width) if set_width else batch.images
        captions = pad_width(batch.captions, caption_width, self.pad_id)
        return Batch(images, batch.image_lengths, captions, batch.caption_lengths, batch.image_ids, batch.caption_ids)


class StaticBatch:
    """The buffers of one padded shape: every batch of that shape is copied into the same tensors.

    Args:
        like: a batch of the shape (its dtypes and device are used).
        shape: ``(batch size, caption width, set width)`` (:meth:`Buckets.shape_of`).
        pad_id: the id written past each batch's own caption width.
    """

    def __init__(self, like: Batch, shape: tuple[int, int, int], pad_id: int) -> None:
        padded = Buckets((shape[1],), (shape[2],) if shape[2] else (), pad_id).pad(like, shape)
        self.batch = Batch(**{name: getattr(padded, name).clone() for name in BATCH_FIELDS})
        self.pad_id = pad_id

    def copy_in(self, batch: Batch) -> None:
        """Copy ``batch`` (of this shape before padding) into the buffers, padding written past its widths."""
        s = self.batch
        if batch.images.dim() == 3:
            width = batch.images.shape[1]
            s.images[:, :width].copy_(batch.images, non_blocking=True)
            s.images[:, width:].zero_()
        else:
            s.images.copy_(batch.images, non_blocking=True)
        width = batch.captions.shape[1]
        s.captions[:, :width].copy_(batch.captions, non_blocking=True)
        s.captions[:, width:].fill_(self.pad_id)
        for name in ("image_lengths", "caption_lengths", "image_ids", "caption_ids"):
            getattr(s, name).copy_(getattr(batch, name), non_blocking=True)


class Snapshot:
    """The weights, buffers, optimizer state and RNG state before warm-up steps, to put back in place (the same
    tensors, so that a graph captured afterwards reads and writes them).

    Optimizer state that the warm-up created (a fresh run's first steps) is zeroed rather than removed: a zero
    Adam/AdamW state (step, moments) and a zero SGD momentum buffer update exactly as no state does, and the
    tensors must exist before a capture (created inside one, they would be reset by every replay).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.device = device
        self.tensors = [(t, t.detach().clone()) for t in [*model.parameters(), *model.buffers()]]
        self.optimizer = optimizer
        self.state = {
            (id(p), k): v.detach().clone()
            for p, s in optimizer.state.items() for k, v in s.items() if isinstance(v, Tensor)
        }  # fmt: skip
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in self.tensors:
            tensor.copy_(saved)
        for p, s in self.optimizer.state.items():
            for k, v in s.items():
                if isinstance(v, Tensor):
                    saved = self.state.get((id(p), k))
                    v.copy_(saved) if saved is not None else v.zero_()
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)


def captures_update(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's update can be part of a graph: Adam and AdamW with ``capturable=True``."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Switch Adam/AdamW to ``capturable=True``: step counts on the device, read there, not by the host."""
    optimizer.defaults["capturable"] = True
    for group in optimizer.param_groups:
        group["capturable"] = True
    for state in optimizer.state.values():
        step = state.get("step")
        if isinstance(step, Tensor):
            state["step"] = step.to(device=device, dtype=torch.float32)


@dataclass
class _Shape:
    """One padded shape's buffers and, on CUDA, its graph and the tensors it writes."""

    static: StaticBatch
    weight: Tensor
    prepared: bool = False
    graph: Any = None
    loss: Tensor | None = None
    grads: list[Tensor | None] = field(default_factory=list)


class GraphedSteps:
    """The training step on static buffers, one per padded shape, captured as a CUDA graph on CUDA.

    Args:
        body: the step without its optimizer update (:data:`StepBody`).
        model: the module whose parameters and buffers the step changes (restored after the warm-up).
        optimizer: the optimizer; Adam and AdamW become ``capturable`` on CUDA and update inside the graph.
        device: the training device; on a CPU the step runs eagerly on the buffers.
        buckets: the padded widths.
        warmup: steps before each capture (:data:`WARMUP_STEPS`, :data:`DDP_WARMUP_STEPS`).
        agree: maps the local ``[caption width, set width]`` to the ones every rank uses (data-parallel
            training: their maximum); None: the local ones.

    Attributes:
        captures: the number of shapes prepared so far (warmed up, restored, and captured on CUDA).
    """

    def __init__(
        self,
        body: StepBody,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        buckets: Buckets,
        warmup: int = WARMUP_STEPS,
        agree: Callable[[list[int]], list[int]] | None = None,
    ) -> None:
        self.body, self.model, self.optimizer, self.device = body, model, optimizer, device
        self.buckets, self.warmup, self.agree = buckets, warmup, agree
        self.cuda = device.type == "cuda"
        self.update_inside = self.cuda and captures_update(optimizer)
        if self.update_inside:
            make_capturable(optimizer, device)
        self.shapes: dict[tuple, _Shape] = {}
        self.mode: Any = None
        self.captures = 0
        self.pool = torch.cuda.graph_pool_handle() if self.cuda else None
        self.lr_tensors = [torch.zeros((), device=device) for _ in optimizer.param_groups]
        self.lr_values: list[float | None] = [None] * len(optimizer.param_groups)

    def shape_of(self, batch: Batch) -> tuple[int, int, int]:
        """The padded shape of ``batch``, agreed between the ranks."""
        size, captions, sets = self.buckets.shape_of(batch)
        if self.agree is not None:
            captions, sets = self.agree([captions, sets])
        return size, captions, sets

    def __call__(self, batch: Batch, weight: float, context: Any = None, mode: Any = None) -> Tensor:
        """One optimisation step on ``batch`` (on the device) with its loss times ``weight``; returns that loss.

        ``context`` goes to the body and, with ``mode`` (what else the step depends on: which parameters train,
        the loss's negatives), into the key of the graph: a new ``mode`` drops the graphs of the previous one.
        """
        if mode != self.mode:
            self.shapes.clear()
            self.mode = mode
        shape = self.shape_of(batch)
        key = (shape, context_key(context))
        entry = self.shapes.get(key)
        if entry is None:
            weight_buffer = torch.ones((), device=self.device)
            entry = self.shapes[key] = _Shape(StaticBatch(batch, shape, self.buckets.pad_id), weight_buffer)
        entry.static.copy_in(batch)
        entry.weight.fill_(weight)
        if not entry.prepared:
            self.prepare(entry, context)
        if not self.cuda:
            return self.run_eager(entry, context)
        if self.update_inside:
            self.refresh_learning_rates()
        entry.graph.replay()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for p, grad in zip(params, entry.grads):  # the gradients this graph wrote, for what reads them next
            p.grad = grad
        if not self.update_inside:
            self.optimizer.step()
        return entry.loss.detach().clone()

    def run_eager(self, entry: _Shape, context: Any) -> Tensor:
        """The step on the buffers without a graph (CPU): what a replay computes."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.body(entry.static.batch, entry.weight, context)
        self.optimizer.step()
        return loss.detach()

    def prepare(self, entry: _Shape, context: Any) -> None:
        """First batch of a shape: warm-up steps (a side stream on CUDA), everything put back, then on CUDA the
        capture. A step that cannot be captured is a one-line :class:`ConfigError`."""
        snapshot = Snapshot(self.model, self.optimizer, self.device)
        with self.side_stream():
            for _ in range(self.warmup):
                self.run_eager(entry, context)
        snapshot.restore()
        self.captures += 1
        entry.prepared = True
        if not self.cuda:
            return
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with self.tensor_learning_rates(), torch.cuda.graph(graph, pool=self.pool):
                entry.loss = self.body(entry.static.batch, entry.weight, context)
                if self.update_inside:
                    self.optimizer.step()
        except RuntimeError as e:
            raise ConfigError(f"cuda_graphs: the training step could not be captured ({first_line(e)}); set cuda_graphs=false") from None
        entry.graph = graph
        entry.grads = [p.grad for g in self.optimizer.param_groups for p in g["params"]]

    @contextlib.contextmanager
    def side_stream(self) -> Iterator[None]:
        """On CUDA, a side stream that waits for the current one (and is waited for after the block)."""
        if not self.cuda:
            yield
            return
        side, current = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            yield
        current.wait_stream(side)

    @contextlib.contextmanager
    def tensor_learning_rates(self) -> Iterator[None]:
        """During a capture, the groups' learning rates as the device tensors that :meth:`refresh_learning_rates`
        fills (a float would be baked into the graph); floats again afterwards (schedule, checkpoints)."""
        groups = self.optimizer.param_groups
        floats = [g["lr"] for g in groups]
        if self.update_inside:
            self.refresh_learning_rates()
            for group, tensor in zip(groups, self.lr_tensors):
                group["lr"] = tensor
        try:
            yield
        finally:
            for group, value in zip(groups, floats):
                group["lr"] = value

    def refresh_learning_rates(self) -> None:
        """Copy the groups' current learning rates into the tensors the graphs read (only those that changed)."""
        for i, group in enumerate(self.optimizer.param_groups):
            if self.lr_values[i] != group["lr"]:
                self.lr_tensors[i].fill_(group["lr"])
                self.lr_values[i] = group["lr"]


def context_key(context: Any) -> Any:
    """What of a step's ``context`` a graph bakes in: a data-parallel shard's rank and sizes."""
    if context is None:
        return None
    return (getattr(context, "rank", None), tuple(getattr(context, "sizes", ())))
