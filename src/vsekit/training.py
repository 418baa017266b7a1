"""The training program: one function, :func:`train`, driven by a :class:`vsekit.config.TrainConfig`.

A run folder holds::

    config.yaml     the resolved config
    metrics.jsonl   one JSON line per epoch (train loss, lr, validation metrics, timing)
    best.pt         the checkpoint with the best validation rsum (model selection)
    last.pt         the latest checkpoint with optimizer and RNG state (resume point)
    curves.png      training loss and validation rsum per epoch

All files are written atomically. Calling :func:`train` again on the same folder resumes from ``last.pt``
and continues exactly as an uninterrupted run would (same batches, same augmentation draws).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .checkpoint import config_from_checkpoint, read_checkpoint, save_checkpoint
from .config import TrainConfig, dump_yaml, to_dict
from .data import Collator, build_tokenizer, tokenizer_from_dict
from .data.factory import build_dataset
from .encoders import load_word_vectors
from .errors import ConfigError
from .evaluation import evaluate_model
from .io import atomic_write_text
from .losses import ContrastiveLoss, instance_loss
from .models import VSEModel, create_model
from .progress import Progress


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``'auto'`` -> CUDA when available, else Apple MPS when available, else CPU."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available")
    return device


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``'bf16'``/``'fp16'``; a null context for ``'fp32'``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    """Freeze (``requires_grad=False``) the modules of ``optim.freeze`` that are frozen at ``epoch``.

    Returns the frozen module paths.
    """
    frozen = [p for p, n in cfg.optim.freeze.items() if n < 0 or epoch < n]
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


def compute_loss(model: VSEModel, batch: Any, loss_fn: ContrastiveLoss, cfg: TrainConfig, precision: str) -> Tensor:
    """The training loss of one batch: weighted hinge ranking loss plus the Dual-Path instance losses."""
    lc = cfg.loss
    instance = lc.instance_image_weight > 0 or lc.instance_text_weight > 0
    with autocast_context(batch.images.device, precision):
        img, img_raw = model.forward_image(batch.images, batch.image_lengths, return_raw=True)
        cap, cap_raw = model.forward_text(batch.captions, batch.caption_lengths, return_raw=True)
    loss = img.new_zeros((), dtype=torch.float32)
    if lc.ranking_weight > 0:
        loss = loss + lc.ranking_weight * loss_fn(model.similarity(img.float(), cap.float()), batch.image_ids)
    if instance:
        labels = batch.image_ids
        if lc.instance_image_weight > 0:
            logits = model.classify(img_raw.float(), cfg.model.image.dropout)
            loss = loss + lc.instance_image_weight * instance_loss(logits, labels)
        if lc.instance_text_weight > 0:
            logits = model.classify(cap_raw.float(), cfg.model.text.dropout)
            loss = loss + lc.instance_text_weight * instance_loss(logits, labels)
    return loss


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
    """The parts of a config that must not change when a run is resumed."""
    d = to_dict(cfg)
    for key in ("epochs", "workers", "device", "eval_batch_size"):
        d.pop(key)
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
    """
    say = log or (lambda _msg: None)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)

    ckpt = None
    if (run_dir / "last.pt").is_file():
        if not resume:
            raise ConfigError(f"{run_dir}: already holds a run (last.pt); resume it or choose another run folder")
        ckpt = read_checkpoint(run_dir / "last.pt")

    if datasets is None:
        datasets = {
            "train": build_dataset(cfg.data, cfg.data.train_split),
            "val": build_dataset(cfg.data, cfg.data.val_split, max_images=cfg.data.val_max_images),
        }
    train_set, val_set = datasets["train"], datasets["val"]

    cfg = resolve_for_data(cfg, train_set)
    if ckpt is not None and _comparable(config_from_checkpoint(ckpt)) != _comparable(cfg):
        raise ConfigError(f"{run_dir}: holds a run with a different config; resume it unchanged or use another folder")
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
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    loss_fn = ContrastiveLoss(cfg.loss.margin, cfg.loss.negatives, cfg.loss.warmup_epochs, cfg.loss.same_image_positives)

    start_epoch, start_batch, step = 0, 0, 0
    best_rsum, best_epoch, history = -math.inf, -1, []
    epoch_loss_sum, epoch_loss_n = 0.0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_batch, step = ckpt["epoch"], ckpt.get("batch_in_epoch", 0), ckpt["step"]
        best_rsum, best_epoch = ckpt["best_rsum"], ckpt["best_epoch"]
        history = json.loads(ckpt.get("history", "[]"))
        epoch_loss_sum, epoch_loss_n = ckpt.get("epoch_loss", (0.0, 0))
        _set_rng_state(ckpt["rng"])
        say(f"resumed from {run_dir / 'last.pt'} at epoch {start_epoch + 1}, batch {start_batch}, step {step}")
    atomic_write_text(dump_yaml(cfg), run_dir / "config.yaml")
    _write_metrics(run_dir, history)

    collator = Collator(model.tokenizer, model.image_input, train=True)
    n_params = sum(p.numel() for p in model.parameters())
    if ckpt is None:
        say(
            f"training {cfg.name}: {len(train_set)} pairs ({train_set.num_images} images), "
            f"{val_set.num_images} val images, {n_params / 1e6:.2f}M parameters, vocab {len(model.tokenizer)}, device {device}"
        )

    def save_last(epoch: int, batch_in_epoch: int, loss_state: tuple[float, int]) -> None:
        save_checkpoint(
            run_dir / "last.pt", model, cfg,
            epoch=epoch, batch_in_epoch=batch_in_epoch, step=step, best_rsum=best_rsum, best_epoch=best_epoch,
            optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler.is_enabled() else {},
            rng=_rng_state(), history=json.dumps(history), epoch_loss=loss_state,
        )  # fmt: skip

    for epoch in range(start_epoch, cfg.epochs):
        for g in optimizer.param_groups:
            g["lr"] = lr_at_epoch(cfg.optim.lr, epoch, cfg.optim.lr_decay_epochs, cfg.optim.lr_decay) * g["lr_mult"]
        loss_fn.set_epoch(epoch)
        frozen = apply_freeze(model, cfg, epoch)
        ramp = cfg.optim.unfreeze_ramp and epoch == unfreeze_epoch(cfg)
        batches = epoch_batches(len(train_set), cfg.batch_size, cfg.seed, epoch)
        first = start_batch if epoch == start_epoch else 0
        if epoch != start_epoch:
            epoch_loss_sum, epoch_loss_n = 0.0, 0
        loader = DataLoader(
            train_set,
            batch_sampler=batches[first:],
            collate_fn=collator,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),  # keeps the global RNG (augmentation draws) untouched
        )
        bar = Progress(len(batches) * cfg.batch_size, f"epoch {epoch + 1}/{cfg.epochs}", "pairs", progress_stream)
        bar.count = first * cfg.batch_size
        model.train()
        t0 = time.perf_counter()
        for b, batch in enumerate(loader, start=first):
            batch = batch.to(device, non_blocking=True)
            loss = compute_loss(model, batch, loss_fn, cfg, cfg.precision)
            if ramp:  # VSE∞: the loss grows linearly over the first epoch after the backbone unfreezes
                loss = loss * ((b + 1) / len(batches))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_value = float(loss.detach())
            epoch_loss_sum += loss_value
            epoch_loss_n += 1
            bar.update(len(batch.caption_ids), loss=loss_value)
            done = max_steps is not None and step >= max_steps
            if done or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and b + 1 < len(batches)):
                save_last(epoch, b + 1, (epoch_loss_sum, epoch_loss_n))
            if done:
                bar.close()
                say(f"stopped after {step} steps (max_steps); resume with the same run folder")
                return TrainResult(run_dir, model.eval(), best_rsum, best_epoch, history, completed=False)
        bar.close()
        train_time = time.perf_counter() - t0

        t1 = time.perf_counter()
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
        history.append(record)
        improved = val["rsum"] > best_rsum
        if improved:
            best_rsum, best_epoch = val["rsum"], epoch + 1
            save_checkpoint(run_dir / "best.pt", model, cfg, epoch=epoch + 1, step=step, best_rsum=best_rsum, best_epoch=best_epoch)
        save_last(epoch + 1, 0, (0.0, 0))
        _write_metrics(run_dir, history)
        _plot_curves(run_dir, history)
        say(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.3f} ({record['negatives']}), "
            f"val rsum {val['rsum']:.1f} (i2t R@1 {val['i2t_r1']:.1f}, t2i R@1 {val['t2i_r1']:.1f})"
            f"{' *best*' if improved else ''}, {record['pairs_per_second']:.0f} pairs/s"
        )

    best = read_checkpoint(run_dir / "best.pt") if (run_dir / "best.pt").is_file() else None
    if best is not None:
        model.load_state_dict(best["model"])
    return TrainResult(run_dir, model.eval(), best_rsum, best_epoch, history, completed=True)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text("".join(json.dumps(r) + "\n" for r in history), run_dir / "metrics.jsonl")


def _plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> None:
    from .plots import plot_training_curves

    plot_training_curves({run_dir.name: history}, run_dir / "curves.png")
