"""The training program: one function, :func:`train`, driven by a :class:`vsekit.config.TrainConfig`.

A run folder holds::

    config.yaml     the resolved config
    metrics.jsonl   one JSON line per epoch (train loss, lr, validation metrics, timing)
    best.pt         the checkpoint with the best validation rsum (model selection; with optim.ema_decay, of
                    the averaged weights, which are also what validation scores)
    last.pt         the latest checkpoint with optimizer and RNG state (resume point)
    curves.png      training loss and validation rsum per epoch

All files are written atomically. Calling :func:`train` again on the same folder resumes from ``last.pt``
and continues exactly as an uninterrupted run would (same batches, same augmentation draws).

Data-parallel training: the same :func:`train` (and ``vsekit train``) runs under ``torchrun`` with
several processes (see :mod:`vsekit.distributed`). ``batch_size`` is the global batch; every process
trains on its slice of each global batch, the ranking loss is that of the global batch (hardest negatives
over all of it), and the updates equal those of one process with the whole batch. Rank 0 alone
evaluates (the others wait), writes the run folder and logs. ``last.pt`` is the same file as in a
single-process run: the resume position counts global batches, and augmentation draws are seeded per
(seed, rank, step), so a run resumes exactly with the same number of processes (and continues, with other
augmentation draws, with another number). The run folder must be on a filesystem every process sees.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .checkpoint import config_from_checkpoint, read_checkpoint, save_checkpoint
from .config import TrainConfig, dump_yaml, to_dict
from .configure import validate
from .data import Collator, build_tokenizer, tokenizer_from_dict
from .data.factory import build_dataset
from .device import autocast_context, resolve_device
from .distributed import (
    DistContext,
    SeededCollate,
    Shard,
    all_gather_nograd,
    barrier,
    broadcast_object,
    convert_batchnorm,
    gather_with_grad,
    init_from_env,
    rank_seed,
    reduce_sum,
    restore_batchnorm,
    shard_sizes,
    shutdown,
    wrap_ddp,
)
from .encoders import load_word_vectors
from .errors import ConfigError
from .evaluation import evaluate_model
from .io import atomic_write_text
from .losses import BatchOutputs, ContrastiveLoss, Criterion, ShardView, caption_text_ids
from .models import VSEModel, create_model
from .progress import Progress

LOSS_SYNC_STEPS = 20
"""The training loop reads the loss back from the device every this many steps (and before
checkpoints and at epoch ends), not every step: a read-back waits for the device to finish."""


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The shuffled batches of one epoch, a pure function of (seed, epoch): a resumed run replays them.

    The last incomplete batch is dropped when there is at least one full batch.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_items)
    n_full = num_items // batch_size
    stop = n_full * batch_size if n_full > 0 else num_items
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def lr_at_epoch(base_lr: float, epoch: int, decay_epochs: list[int], decay: float) -> float:
    """Step decay: ``base_lr * decay ** (number of decay epochs <= epoch)``."""
    return base_lr * decay ** sum(1 for e in decay_epochs if epoch >= e)


def _match_prefix(name: str, prefixes: Any) -> str | None:
    """The longest of ``prefixes`` that ``name`` (a parameter path) starts with, as a module path."""
    best = None
    for p in prefixes:
        if (name == p or name.startswith(p + ".")) and (best is None or len(p) > len(best)):
            best = p
    return best


def parameter_groups(model: VSEModel, cfg: TrainConfig) -> list[dict[str, Any]]:
    """One optimizer group per learning-rate multiplier.

    A parameter takes the multiplier of the longest matching prefix in ``optim.lr_mults``; otherwise
    ``optim.image_lr_mult`` (image encoder), ``optim.text_lr_mult`` (text encoder) or 1 (the rest, e.g.
    the instance classifier).
    """
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        prefix = _match_prefix(name, cfg.optim.lr_mults)
        if prefix is not None:
            key, mult = prefix, float(cfg.optim.lr_mults[prefix])
        elif name.startswith("image_encoder."):
            key, mult = "image", cfg.optim.image_lr_mult
        elif name.startswith("text_encoder."):
            key, mult = "text", cfg.optim.text_lr_mult
        else:
            key, mult = "other", 1.0
        groups.setdefault(key, {"params": [], "lr_mult": mult, "name": key})["params"].append(param)
    for prefix in cfg.optim.lr_mults:
        if prefix not in groups:
            raise ConfigError(f"optim.lr_mults.{prefix}: no parameter of the model is under this module path")
    out = list(groups.values())
    for g in out:
        g["lr"] = cfg.optim.lr * g["lr_mult"]
    return out


def build_optimizer(model: VSEModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optim`` (AdamW, Adam or Nesterov SGD) over :func:`parameter_groups`."""
    groups = parameter_groups(model, cfg)
    o = cfg.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0, weight_decay=o.weight_decay)
    if o.optimizer == "adam":
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)


def apply_freeze(model: VSEModel, cfg: TrainConfig, epoch: int) -> list[str]:
    """Freeze (``requires_grad=False``) the modules of ``optim.freeze`` that are frozen at ``epoch``, and
    always those the model's encoders declare as never training (:meth:`VSEModel.frozen_modules`).

    Returns the frozen module paths.
    """
    frozen = [p for p, n in cfg.optim.freeze.items() if n < 0 or epoch < n] + model.frozen_modules()
    for prefix in cfg.optim.freeze:
        if not any(name == prefix or name.startswith(prefix + ".") for name, _ in model.named_parameters()):
            raise ConfigError(f"optim.freeze.{prefix}: no parameter of the model is under this module path")
    for name, param in model.named_parameters():
        param.requires_grad_(_match_prefix(name, frozen) is None)
    return frozen


def unfreeze_epoch(cfg: TrainConfig) -> int | None:
    """The epoch in which the last temporarily frozen module starts training (None: none)."""
    epochs = [n for n in cfg.optim.freeze.values() if n > 0]
    return max(epochs) if epochs else None


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


def _compiled(module: nn.Module) -> nn.Module:
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


class WeightEMA:
    """An exponential moving average of a model's weights (``optim.ema_decay``).

    After every optimizer step, ``average = decay * average + (1 - decay) * current`` for each parameter that
    trains and each floating-point buffer (BatchNorm running statistics); other buffers (step counters) are
    copied. Frozen parameters keep their value, so their average is that value. Validation scores the averaged
    weights and ``best.pt`` holds them; ``last.pt`` keeps the average beside the raw weights, so a resumed run
    continues it exactly.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average."""
        params = dict(model.named_parameters())
        state = model.state_dict()
        moving, targets = [], []
        for k, v in state.items():
            if k in params and not params[k].requires_grad:
                continue
            if v.is_floating_point():
                moving.append(self.average[k])
                targets.append(v.detach())
            else:
                self.average[k].copy_(v)
        if moving:
            torch._foreach_lerp_(moving, targets, 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """Run a block with the averaged weights in ``model``, then put its own weights back."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict[str, Tensor]:
        return self.average

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k, v in state.items():
            self.average[k].copy_(v)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    model: VSEModel  # with the best validation weights loaded
    best_rsum: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    completed: bool = True  # False when stopped early by ``max_steps``


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_for_data(cfg: TrainConfig, train_set: Any) -> TrainConfig:
    """Fill in what depends on the training data: ``model.instance_classes = -1`` becomes the number of
    training images (one Dual-Path class per image). The resolved config is what checkpoints store."""
    if cfg.model.instance_classes == -1:
        cfg = copy.deepcopy(cfg)
        cfg.model.instance_classes = int(train_set.num_images)
    return cfg


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    """The parts of a config that must not change when a run is resumed (the name is only a label, and a
    data path counts by where it points: relative and absolute spellings of one folder are the same)."""
    d = to_dict(cfg)
    for key in ("name", "epochs", "workers", "device", "eval_batch_size", "compile"):
        d.pop(key)
    for key in ("path", "features", "images"):
        if d["data"].get(key):
            d["data"][key] = str(Path(d["data"][key]).expanduser().resolve())
    return d


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
    progress_stream: TextIO | None = sys.stderr,
    max_steps: int | None = None,
    datasets: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (or resume training) a model as ``cfg`` describes, in ``run_dir``.

    Args:
        cfg: the resolved training config.
        run_dir: the run folder (created if needed).
        resume: continue from ``run_dir/last.pt`` when it exists; otherwise such a folder is an error.
        log: called with one human-readable line per event (epoch summaries); ``None`` is silent.
        progress_stream: where the progress bar goes (``None``: no bar).
        max_steps: stop after this many optimisation steps in total, writing ``last.pt`` (as if killed).
        datasets: optional ``{"train": ..., "val": ...}`` datasets instead of those of ``cfg.data``.

    Returns:
        A :class:`TrainResult` with the best model.

    Raises:
        ConfigError: for an invalid ``cfg`` (:func:`vsekit.configure.validate`; the data paths only when
            ``datasets`` is not given), before anything is written.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this joins the process group (or uses the caller's, when one is
    already initialised), trains data-parallel as the module docstring describes, and ends the group it
    started. Only rank 0 writes files, logs and draws the progress bar; every rank returns the result.
    """
    validate(cfg, require_data=datasets is None)  # a config built in Python has not been through load_config
    ctx, device, started = init_from_env(resolve_device(cfg.device))
    try:
        return _train(
            cfg, Path(run_dir), ctx, device, resume=resume, log=log if ctx.is_main else None,
            progress_stream=progress_stream if ctx.is_main else None, max_steps=max_steps, datasets=datasets,
        )  # fmt: skip
    finally:
        shutdown(started)


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    ctx: DistContext,
    device: torch.device,
    *,
    resume: bool,
    log: Callable[[str], None] | None,
    progress_stream: TextIO | None,
    max_steps: int | None,
    datasets: dict[str, Any] | None,
) -> TrainResult:
    """:func:`train` in one process of ``ctx`` (rank 0 of 1 without data parallelism), on ``device``."""
    say = log or (lambda _msg: None)
    main = ctx.is_main
    run_dir.mkdir(parents=True, exist_ok=True)

    ckpt = None
    if (run_dir / "last.pt").is_file():
        if not resume:
            raise ConfigError(f"{run_dir}: already holds a run (last.pt); resume it or choose another run folder")
        ckpt = read_checkpoint(run_dir / "last.pt")

    if datasets is None:
        datasets = {
            "train": build_dataset(cfg.data, cfg.data.train_split),
            "val": build_dataset(cfg.data, cfg.data.val_split, max_images=cfg.data.val_max_images, evaluation=True),
        }
    train_set, val_set = datasets["train"], datasets["val"]

    cfg = resolve_for_data(cfg, train_set)
    if ckpt is not None and _comparable(config_from_checkpoint(ckpt)) != _comparable(cfg):
        raise ConfigError(f"{run_dir}: holds a run with a different config; resume it unchanged or use another folder")
    if ctx.enabled:  # every process needs a sample of every global batch
        shard_sizes(min(cfg.batch_size, len(train_set)), ctx.world_size)
    torch.manual_seed(cfg.seed)
    word_vectors = None
    init = None
    if ckpt is not None:
        tokenizer = tokenizer_from_dict(ckpt["vocab"], source=str(run_dir / "last.pt"))
    elif cfg.init_from:
        init = read_checkpoint(cfg.init_from)
        tokenizer = tokenizer_from_dict(init["vocab"], source=init["path"])
    else:
        tokenizer = build_tokenizer(cfg.model.text, train_set.captions(), min_count=cfg.data.vocab_min_count)
        if cfg.model.text.word_vectors:
            word_vectors, found = load_word_vectors(cfg.model.text.word_vectors, tokenizer.idx2word, cfg.model.text.word_dim)
            say(f"word vectors: {found}/{len(tokenizer)} vocabulary words found in {cfg.model.text.word_vectors}")
    model = create_model(cfg.model, tokenizer, word_vectors=word_vectors).to(device)
    if init is not None:
        try:
            model.load_state_dict(init["model"], strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())[:300]
            raise ConfigError(f"init_from: {init['path']}: weights do not match this model ({detail})") from None
        say(f"initialised from {init['path']}")
    for name, ds in (("train", train_set), ("val", val_set)):
        kind = getattr(ds, "image_kind", "features")
        if kind != model.image_input.kind:
            raise ConfigError(
                f"data: the {name} split gives images as {kind}, but model.image.kind={cfg.model.image.kind!r} takes "
                f"{model.image_input.kind}"
            )
    if ctx.enabled:  # BatchNorm statistics of the global batch, as in one process
        convert_batchnorm(model)
    optimizer = build_optimizer(model, cfg)
    ema = WeightEMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    loss_fn = ContrastiveLoss.from_config(cfg.loss)
    text_ids = caption_text_ids(train_set.captions()) if cfg.loss.same_text_positives else None

    start_epoch, start_batch, step = 0, 0, 0
    best_rsum, best_epoch, history = -math.inf, -1, []
    epoch_loss_sum, epoch_loss_n = 0.0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        start_epoch, start_batch, step = ckpt["epoch"], ckpt.get("batch_in_epoch", 0), ckpt["step"]
        best_rsum, best_epoch = ckpt["best_rsum"], ckpt["best_epoch"]
        history = json.loads(ckpt.get("history", "[]"))
        epoch_loss_sum, epoch_loss_n = ckpt.get("epoch_loss", (0.0, 0))
        _set_rng_state(ckpt["rng"])
        say(f"resumed from {run_dir / 'last.pt'} at epoch {start_epoch + 1}, batch {start_batch}, step {step}")
    if main:
        atomic_write_text(dump_yaml(cfg), run_dir / "config.yaml")
        _write_metrics(run_dir, history)

    collator = Collator(model.tokenizer, model.image_input, train=True)
    n_params = sum(p.numel() for p in model.parameters())
    if ckpt is None:
        say(
            f"training {cfg.name}: {len(train_set)} pairs ({train_set.num_images} images), "
            f"{val_set.num_images} val images, {n_params / 1e6:.2f}M parameters, vocab {len(model.tokenizer)}, device {device}"
            + (f" ({ctx.world_size} processes, {cfg.batch_size} pairs per global batch)" if ctx.enabled else "")
        )
    forward = TrainingForward(model, cfg)
    step_forward: nn.Module = forward  # DDP-wrapped in data-parallel training
    if cfg.compile:  # the model itself stays uncompiled, so checkpoints keep their keys
        step_forward = _compiled(forward)
    ddp_frozen: list[str] | None = None

    def save_last(epoch: int, batch_in_epoch: int, loss_state: tuple[float, int]) -> None:
        if not main:
            return
        save_checkpoint(
            run_dir / "last.pt", model, cfg,
            epoch=epoch, batch_in_epoch=batch_in_epoch, step=step, best_rsum=best_rsum, best_epoch=best_epoch,
            optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler.is_enabled() else {},
            rng=_rng_state(), history=json.dumps(history), epoch_loss=loss_state,
            **({"ema": ema.state_dict()} if ema is not None else {}),
        )  # fmt: skip

    for epoch in range(start_epoch, cfg.epochs):
        for g in optimizer.param_groups:
            g["lr"] = lr_at_epoch(cfg.optim.lr, epoch, cfg.optim.lr_decay_epochs, cfg.optim.lr_decay) * g["lr_mult"]
        loss_fn.set_epoch(epoch)
        frozen = apply_freeze(model, cfg, epoch)
        if ctx.enabled and frozen != ddp_frozen:  # DDP syncs the parameters that train when it is built
            step_forward = forward
            gc.collect()  # release the previous wrapper's gradient hooks
            step_forward, ddp_frozen = wrap_ddp(forward, device), frozen
            if cfg.compile:
                step_forward = _compiled(step_forward)
        ramp = cfg.optim.unfreeze_ramp and epoch == unfreeze_epoch(cfg)
        batches = epoch_batches(len(train_set), cfg.batch_size, cfg.seed, epoch)
        first = start_batch if epoch == start_epoch else 0
        if epoch != start_epoch:
            epoch_loss_sum, epoch_loss_n = 0.0, 0
        shards: list[Shard | None] = [None] * len(batches)
        local_batches, epoch_collate = batches, collator
        if ctx.enabled:  # this process's contiguous slice of every global batch
            shards = [Shard(ctx.rank, shard_sizes(len(b), ctx.world_size)) for b in batches]
            local_batches = [b[s.offset : s.offset + s.size] for b, s in zip(batches, shards)]
            epoch_collate = SeededCollate(collator, cfg.seed, ctx.rank, epoch)
        loader = DataLoader(
            train_set,
            batch_sampler=local_batches[first:],
            collate_fn=epoch_collate,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),  # keeps the global RNG (augmentation draws) untouched
        )
        bar = Progress(len(batches) * cfg.batch_size, f"epoch {epoch + 1}/{cfg.epochs}", "pairs", progress_stream)
        bar.count = first * cfg.batch_size
        model.train()
        pending, pending_n = None, 0  # losses of the steps since the last read-back (on the device)
        loss_acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        t0 = time.perf_counter()
        for b, batch in enumerate(loader, start=first):
            batch = batch.to(device, non_blocking=True)
            if ctx.enabled:  # this process's augmentation draws: a function of (seed, rank, step), resumable
                torch.manual_seed(rank_seed(cfg.seed, ctx.rank, step))
            loss = compute_loss(
                model, batch, loss_fn, cfg, cfg.precision, forward=step_forward, shard=shards[b], text_ids=text_ids
            )
            if ramp:  # VSE∞: the loss grows linearly over the first epoch after the backbone unfreezes
                loss = loss * ((b + 1) / len(batches))
            optimizer.zero_grad(set_to_none=True)
            # data-parallel: DDP averages gradients over the processes and the loss shares sum to the loss
            # of the global batch, so world_size × share gives each parameter the single-process gradient
            scaler.scale(loss * ctx.world_size if ctx.enabled else loss).backward()
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model)
            step += 1
            # the loss stays on the device (no host sync per step); it is read back every
            # LOSS_SYNC_STEPS steps, before checkpoints and at the end of the epoch (the same steps on
            # every process), accumulated in float64 so the epoch sum does not depend on the grouping
            pending = loss.detach().to(loss_acc_dtype) + (pending if pending is not None else 0)
            pending_n += 1
            done = max_steps is not None and step >= max_steps
            checkpoint = done or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and b + 1 < len(batches))
            if checkpoint or step % LOSS_SYNC_STEPS == 0 or b + 1 == len(batches):
                loss_total = float(reduce_sum(pending) if ctx.enabled else pending)
                epoch_loss_sum += loss_total
                epoch_loss_n += pending_n
                bar.postfix["loss"] = loss_total / pending_n
                pending, pending_n = None, 0
            bar.update(len(batches[b]))
            if checkpoint:
                save_last(epoch, b + 1, (epoch_loss_sum, epoch_loss_n))
            if done:
                bar.close()
                say(f"stopped after {step} steps (max_steps); resume with the same run folder")
                barrier()  # last.pt is written when any process returns
                return TrainResult(run_dir, restore_batchnorm(model).eval(), best_rsum, best_epoch, history, completed=False)
        bar.close()
        train_time = time.perf_counter() - t0

        record = None
        if main:  # the other processes wait in broadcast_object
            t1 = time.perf_counter()
            with ema.applied(model) if ema is not None else contextlib.nullcontext(model):
                val = evaluate_model(model, val_set, batch_size=cfg.eval_batch_size)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": optimizer.param_groups[0]["lr"],
                "negatives": loss_fn.current_negatives,
                "frozen": frozen,
                "train_loss": epoch_loss_sum / max(1, epoch_loss_n),
                **{f"val_{k}": v for k, v in val.items()},
                "train_seconds": round(train_time, 3),
                "pairs_per_second": round((bar.count - first * cfg.batch_size) / max(train_time, 1e-9), 1),
                "val_seconds": round(time.perf_counter() - t1, 3),
            }
        record = broadcast_object(record)
        history.append(record)
        improved = record["val_rsum"] > best_rsum
        if improved:
            best_rsum, best_epoch = record["val_rsum"], epoch + 1
            if main:
                with ema.applied(model) if ema is not None else contextlib.nullcontext(model):
                    save_checkpoint(
                        run_dir / "best.pt", model, cfg, epoch=epoch + 1, step=step, best_rsum=best_rsum, best_epoch=best_epoch
                    )  # fmt: skip
        save_last(epoch + 1, 0, (0.0, 0))
        if main:
            _write_metrics(run_dir, history)
            _plot_curves(run_dir, history)
        val = {k[4:]: v for k, v in record.items() if k.startswith("val_") and k != "val_seconds"}
        say(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.3f} ({record['negatives']}), "
            f"val rsum {val['rsum']:.1f} (i2t R@1 {val['i2t_r1']:.1f}, t2i R@1 {val['t2i_r1']:.1f})"
            f"{' *best*' if improved else ''}, {record['pairs_per_second']:.0f} pairs/s"
        )

    barrier()  # best.pt is complete before any process reads it
    restore_batchnorm(model)
    best = read_checkpoint(run_dir / "best.pt") if (run_dir / "best.pt").is_file() else None
    if best is not None:
        model.load_state_dict(best["model"])
    return TrainResult(run_dir, model.eval(), best_rsum, best_epoch, history, completed=True)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text("".join(json.dumps(r) + "\n" for r in history), run_dir / "metrics.jsonl")


def _plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> None:
    from .plots import plot_training_curves

    plot_training_curves({run_dir.name: history}, run_dir / "curves.png")
