"""One optimisation step: the model's forward over a batch (:class:`TrainingForward`), the loss
(:func:`compute_loss`), and the backward pass, clipping, optimizer and weight-average updates
(:class:`TrainingStep`); plus the epoch's loss, read back from the device now and then (:class:`LossTally`)."""

from __future__ import annotations

import contextlib
import gc
from typing import Any

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..device import autocast_context
from ..errors import ConfigError
from ..losses import BatchOutputs, ContrastiveLoss, Criterion, ShardView
from ..models import VSEModel
from .distributed import DistContext, Shard, all_gather_nograd, all_max, gather_with_grad, rank_seed, reduce_sum, wrap_ddp
from .ema import WeightEMA
from .graphs import DDP_WARMUP_STEPS, WARMUP_STEPS, Buckets, GraphedSteps

LOSS_SYNC_STEPS = 20
"""The training loop reads the loss back from the device every this many steps (and before
checkpoints and at epoch ends), not every step: a read-back waits for the device to finish."""


class TrainingForward(nn.Module):
    """The model's forward over one training batch, as the loss needs it: the embeddings of both branches
    and, when the Dual-Path instance losses are on, the instance logits. Data-parallel training wraps this
    module in DDP (which synchronises what runs inside a module's ``forward``).

    Args:
        model: the model.
        cfg: the training config (which instance logits are needed; classifier dropout).
    """

    def __init__(self, model: VSEModel, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.image_logits = cfg.loss.instance_image_weight > 0
        self.text_logits = cfg.loss.instance_text_weight > 0
        self.image_dropout, self.text_dropout = cfg.model.image.dropout, cfg.model.text.dropout

    def forward(
        self, images: Tensor, image_lengths: Tensor, captions: Tensor, caption_lengths: Tensor, precision: str = "fp32"
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Returns ``(image embeddings, caption embeddings, image logits | None, caption logits | None)``."""
        with autocast_context(images.device, precision):
            img, img_raw = self.model.forward_image(images, image_lengths, return_raw=True)
            cap, cap_raw = self.model.forward_text(captions, caption_lengths, return_raw=True)
        img_logits = self.model.classify(_upcast(img_raw), self.image_dropout) if self.image_logits else None
        cap_logits = self.model.classify(_upcast(cap_raw), self.text_dropout) if self.text_logits else None
        return img, cap, img_logits, cap_logits


def compile_dynamic(module: nn.Module) -> nn.Module:
    """``module`` through ``torch.compile`` with dynamic shapes (set sizes and caption lengths vary per batch).

    Raises:
        ConfigError: if this PyTorch cannot compile (e.g. no C++ compiler for the CPU backend).
    """
    if not hasattr(torch, "compile"):
        raise ConfigError("compile: this PyTorch has no torch.compile; set compile=false")
    return torch.compile(module, dynamic=True)


def _upcast(x: Tensor) -> Tensor:
    """Half-precision (autocast) outputs to float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def compute_loss(
    model: VSEModel,
    batch: Any,
    loss_fn: ContrastiveLoss,
    cfg: TrainConfig,
    precision: str,
    *,
    forward: nn.Module | None = None,
    shard: Shard | None = None,
    text_ids: Tensor | None = None,
) -> Tensor:
    """The training loss of one batch: the model's forward, then the :class:`~vsekit.losses.Criterion` of
    ``cfg.loss`` (weighted ranking loss plus the Dual-Path instance losses).

    Args:
        model: the model.
        batch: the batch (on the model's device).
        loss_fn: the ranking loss.
        cfg: the training config (loss weights).
        precision: ``'fp32'``, ``'bf16'`` or ``'fp16'`` (autocast of the encoders).
        forward: what runs the model on the batch: a :class:`TrainingForward` of ``model``, wrapped in DDP in
            data-parallel training (default: a plain :class:`TrainingForward`).
        shard: in data-parallel training, this process's slice of the global batch. The result is then
            this process's share of the global batch's loss: the embeddings of every process are gathered
            (gradients flow back to their process), the local queries are ranked against all candidates,
            and the shares of all processes sum to the loss of the global batch.
        text_ids: with ``cfg.loss.same_text_positives``, the text id of every caption of the training set
            (:func:`~vsekit.losses.caption_text_ids`), indexed by ``batch.caption_ids``.

    Returns:
        The scalar loss (or share).
    """
    run = forward if forward is not None else TrainingForward(model, cfg)
    img, cap, img_logits, cap_logits = run(batch.images, batch.image_lengths, batch.captions, batch.caption_lengths, precision)
    tids = None
    if text_ids is not None and loss_fn.same_text_positives:
        tids = text_ids[batch.caption_ids.cpu()].to(batch.caption_ids.device)
    view = None
    if shard is not None:
        view = ShardView(shard.offset, shard.total, lambda x: gather_with_grad(x, shard), lambda x: all_gather_nograd(x, shard))
    out = BatchOutputs(_upcast(img), _upcast(cap), batch.image_ids, model.similarity, img_logits, cap_logits, tids, view)
    return Criterion.from_config(cfg.loss, loss_fn)(out)


class TrainingStep:
    """The per-step work of the training loop: loss, backward pass, clipping, optimizer and average updates.

    Args:
        model: the model (its own weights are what the optimizer updates and the average follows).
        cfg: the training config.
        optimizer, scaler: the optimizer and the gradient scaler (enabled for fp16).
        ema: the weight average, or None.
        loss_fn: the ranking loss.
        text_ids: the caption text ids of ``loss.same_text_positives`` (see :func:`compute_loss`), or None.
        ctx: this process's place in a data-parallel run.
    """

    def __init__(
        self,
        model: VSEModel,
        cfg: TrainConfig,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        ema: WeightEMA | None,
        loss_fn: ContrastiveLoss,
        text_ids: Tensor | None,
        ctx: DistContext,
    ) -> None:
        self.model, self.cfg, self.optimizer, self.scaler, self.ema = model, cfg, optimizer, scaler, ema
        self.loss_fn, self.text_ids, self.ctx = loss_fn, text_ids, ctx
        self.training_forward = TrainingForward(model, cfg)
        # what runs the model: compiled with cfg.compile (the model itself stays uncompiled, so checkpoints
        # keep their keys), DDP-wrapped in data-parallel training (see wrap_for)
        self.forward: nn.Module = compile_dynamic(self.training_forward) if cfg.compile else self.training_forward
        self.ddp_frozen: list[str] | None = None
        self.graphs = self.graphed_steps(model.device) if cfg.cuda_graphs else None

    def graphed_steps(self, device: torch.device) -> GraphedSteps:
        """The step at bucketed static shapes (``cuda_graphs``): captured on CUDA, eager on the buffers elsewhere."""
        cfg, ctx = self.cfg, self.ctx
        buckets = Buckets(tuple(cfg.graph_caption_buckets), tuple(cfg.graph_set_buckets), self.model.tokenizer.pad_id)
        agree = (lambda widths: all_max(widths, device)) if ctx.enabled else None
        warmup = DDP_WARMUP_STEPS if ctx.enabled else WARMUP_STEPS
        return GraphedSteps(self.loss_and_gradients, self.model, self.optimizer, device, buckets, warmup, agree)

    def loss_and_gradients(self, batch: Any, weight: Tensor | float | None, shard: Shard | None) -> Tensor:
        """The step up to its optimizer update: the loss of ``batch`` (times ``weight`` unless None), its backward
        pass and the gradient clipping; returns the (weighted) loss. Gradients must be None (or zero) before."""
        ctx, cfg = self.ctx, self.cfg
        loss = compute_loss(
            self.model, batch, self.loss_fn, cfg, cfg.precision, forward=self.forward, shard=shard, text_ids=self.text_ids
        )
        if weight is not None:
            loss = loss * weight
        # data-parallel: DDP averages gradients over the processes and the loss shares sum to the loss
        # of the global batch, so world_size × share gives each parameter the single-process gradient
        self.scaler.scale(loss * ctx.world_size if ctx.enabled else loss).backward()
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        return loss

    def wrap_for(self, frozen: list[str], device: torch.device) -> None:
        """In data-parallel training, a new DDP wrapper when the set of ``frozen`` modules has changed: DDP syncs
        the parameters that train when it is built."""
        if not self.ctx.enabled or frozen == self.ddp_frozen:
            return
        self.forward = self.training_forward
        gc.collect()  # release the previous wrapper's gradient hooks
        # CUDA graphs: torch requires the wrapper built on a side stream
        side = torch.cuda.stream(torch.cuda.Stream(device)) if self.graphs is not None and device.type == "cuda" else None
        with side if side is not None else contextlib.nullcontext():
            self.forward, self.ddp_frozen = wrap_ddp(self.training_forward, device), frozen
        if self.cfg.compile:
            self.forward = compile_dynamic(self.forward)

    def __call__(self, batch: Any, step: int, shard: Shard | None, loss_weight: float | None) -> Tensor:
        """One optimisation step on ``batch`` (the ``step``-th of the run); returns the (weighted) loss, on the device.

        ``loss_weight`` scales the loss (the VSE∞ unfreeze ramp); None leaves it as it is.
        """
        ctx, cfg = self.ctx, self.cfg
        if ctx.enabled:  # this process's augmentation draws: a function of (seed, rank, step), resumable
            torch.manual_seed(rank_seed(cfg.seed, ctx.rank, step))
        if self.graphs is not None:
            mode = (tuple(p.requires_grad for p in self.model.parameters()), self.loss_fn.current_negatives)
            loss = self.graphs(batch, 1.0 if loss_weight is None else loss_weight, shard, mode)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_and_gradients(batch, loss_weight, shard)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss


class LossTally:
    """The training loss of one epoch, kept on the device between read-backs.

    The loss stays on the device (no host sync per step); the loop reads it back (:meth:`read_back`) every
    :data:`LOSS_SYNC_STEPS` steps, before checkpoints and at the end of the epoch (the same steps on every
    process), accumulated in float64 (float32 on MPS) so that the epoch sum does not depend on the grouping.

    Args:
        device: the training device.
        across_ranks: sum the losses of all processes at each read-back (data-parallel training).
        total, count: the loss sum and number of steps already read back (a resumed epoch's).
    """

    def __init__(self, device: torch.device, across_ranks: bool, total: float = 0.0, count: int = 0) -> None:
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.across_ranks = across_ranks
        self.total, self.count = total, count
        self.pending: Tensor | None = None  # the losses of the steps since the last read-back
        self.pending_n = 0

    def add(self, loss: Tensor) -> None:
        """Add one step's loss (on the device; no sync)."""
        self.pending = loss.detach().to(self.dtype) + (self.pending if self.pending is not None else 0)
        self.pending_n += 1

    def read_back(self) -> float:
        """Fold the pending losses into the total; returns their mean."""
        loss_total = float(reduce_sum(self.pending) if self.across_ranks else self.pending)
        self.total += loss_total
        self.count += self.pending_n
        mean = loss_total / self.pending_n
        self.pending, self.pending_n = None, 0
        return mean

    @property
    def mean(self) -> float:
        """The mean loss of the steps read back so far."""
        return self.total / max(1, self.count)
