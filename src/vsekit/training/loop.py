"""The training program's entry point, :func:`train`, and its epoch loop (the run folder and the
data-parallel mode are described in :mod:`vsekit.training`)."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from collections.abc import Callable

import torch

from ..config import TrainConfig, dump_yaml
from ..configure import validate
from ..data import Collator
from ..device import resolve_device
from ..errors import ConfigError
from ..evaluation import evaluate_model
from ..io import atomic_write_text, exclusive_folder, remove_stale_temporaries
from ..losses import ContrastiveLoss, caption_text_ids
from ..models import VSEModel
from ..progress import Progress
from .allocator import keep_freed_memory
from .batches import epoch_loader
from .batchnorm import convert_batchnorm, restore_batchnorm
from .distributed import DistContext, barrier, broadcast_object, init_from_env, shard_sizes, shutdown
from .ema import WeightEMA, weights_to_score
from .history import epoch_line, plot_curves, start_line, write_metrics
from .optim import apply_freeze, build_optimizer, set_epoch_lr, unfreeze_epoch
from .setup import build_run_model, check_image_kinds, load_datasets, resolve_for_data
from .state import RunState, check_same_run, load_best, read_resume_point, restore_training_state, save_best, save_last
from .step import LOSS_SYNC_STEPS, LossTally, TrainingStep


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    model: VSEModel  # with the best validation weights loaded
    best_rsum: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    completed: bool = True  # False when stopped early by ``max_steps``


RUN_FILES = ("config.yaml", "metrics.jsonl", "best.pt", "last.pt", "curves.png")
"""The files of a run folder that are written atomically (their temporaries are cleaned when a run starts)."""


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
    already initialised), trains data-parallel as :mod:`vsekit.training` describes, and ends the group it
    started. Only rank 0 writes files, logs and draws the progress bar; every rank returns the result.
    """
    validate(cfg, require_data=datasets is None)  # a config built in Python has not been through load_config
    keep_freed_memory()  # no page faults for what every step frees and allocates again
    ctx, device, started = init_from_env(resolve_device(cfg.device))
    try:
        run_dir = make_run_dir(Path(run_dir))
        with exclusive_folder(run_dir, "run_dir") if ctx.is_main else contextlib.nullcontext():  # one run at a time
            run = start_run(
                cfg, run_dir, ctx, device, resume=resume, log=log if ctx.is_main else None,
                progress_stream=progress_stream if ctx.is_main else None, max_steps=max_steps, datasets=datasets,
            )  # fmt: skip
            return run_epochs(run)
    finally:
        shutdown(started)


def make_run_dir(run_dir: Path) -> Path:
    """``run_dir``, created if needed; an existing file there is a :class:`ConfigError`."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: the run folder is an existing file; expected a folder (new, or a run to resume)")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


@dataclass
class TrainingRun:
    """A run in one process of a (possibly single-process) data-parallel group: what :func:`start_run` built,
    and where the run stands (``state``)."""

    cfg: TrainConfig
    run_dir: Path
    ctx: DistContext
    device: torch.device
    report: Callable[[str], None]
    progress_stream: TextIO | None
    max_steps: int | None
    train_set: Any
    val_set: Any
    model: VSEModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: WeightEMA | None
    loss_fn: ContrastiveLoss
    collator: Collator
    step: TrainingStep
    state: RunState

    def save_last(self) -> None:
        """Write ``last.pt`` (rank 0 alone) at the position of ``state``."""
        if self.ctx.is_main:
            save_last(self.run_dir, self.model, self.cfg, self.state, self.optimizer, self.scaler, self.ema)

    def result(self, completed: bool) -> TrainResult:
        s = self.state
        return TrainResult(self.run_dir, self.model.eval(), s.best_rsum, s.best_epoch, s.history, completed=completed)


def start_run(
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
) -> TrainingRun:
    """Set up :func:`train` in one process of ``ctx`` (rank 0 of 1 without data parallelism), on ``device``: the
    data, the model, optimizer and the rest, fresh or as the run folder's ``last.pt`` left them. ``run_dir`` exists
    (:func:`make_run_dir`) and rank 0 holds it."""
    report = log or (lambda _msg: None)
    if cfg.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"cuda_graphs: needs a CUDA device, got {device.type} (device={cfg.device}); set cuda_graphs=false")
    if ctx.rank == 0:  # what a kill during a write left behind (rank 0 alone writes the run folder)
        for tmp in remove_stale_temporaries(run_dir, RUN_FILES):
            report(f"removed {tmp.name}, left by an interrupted write")
    ckpt = read_resume_point(run_dir, resume)
    train_set, val_set = load_datasets(cfg, datasets)
    cfg = resolve_for_data(cfg, train_set)
    check_same_run(ckpt, cfg, run_dir)
    if ctx.enabled:  # every process needs a sample of every global batch
        shard_sizes(min(cfg.batch_size, len(train_set)), ctx.world_size)
    torch.manual_seed(cfg.seed)
    model = build_run_model(cfg, ckpt, run_dir, train_set, device, report)
    check_image_kinds(model, cfg, train_set, val_set)
    if ctx.enabled:  # BatchNorm statistics of the global batch, as in one process
        convert_batchnorm(model)
    optimizer = build_optimizer(model, cfg)
    ema = WeightEMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    loss_fn = ContrastiveLoss.from_config(cfg.loss)
    text_ids = caption_text_ids(train_set.captions()) if cfg.loss.same_text_positives else None
    state = RunState()
    if ckpt is not None:
        state = restore_training_state(ckpt, model, optimizer, scaler, ema)
        report(f"resumed from {run_dir / 'last.pt'} at epoch {state.epoch + 1}, batch {state.batch_in_epoch}, step {state.step}")
    if ctx.is_main:
        atomic_write_text(dump_yaml(cfg), run_dir / "config.yaml")
        write_metrics(run_dir, state.history)
    collator = Collator(model.tokenizer, model.image_input, train=True)
    if ckpt is None:
        report(start_line(cfg, train_set, val_set, model, device, ctx.world_size))
    step = TrainingStep(model, cfg, optimizer, scaler, ema, loss_fn, text_ids, ctx)
    return TrainingRun(
        cfg, run_dir, ctx, device, report, progress_stream, max_steps, train_set, val_set,
        model, optimizer, scaler, ema, loss_fn, collator, step, state,
    )  # fmt: skip


def run_epochs(run: TrainingRun) -> TrainResult:
    """Train the run's remaining epochs (validating, checkpointing and logging after each) and return the best
    model; or stop at ``max_steps`` with ``last.pt`` written."""
    while run.state.epoch < run.cfg.epochs:
        trained = train_epoch(run)
        if trained is None:
            run.report(f"stopped after {run.state.step} steps (max_steps); resume with the same run folder")
            barrier()  # last.pt is written when any process returns
            restore_batchnorm(run.model)
            return run.result(completed=False)
        end_epoch(run, trained)
    barrier()  # best.pt is complete before any process reads it
    restore_batchnorm(run.model)
    load_best(run.run_dir, run.model)
    return run.result(completed=True)


@dataclass
class EpochTraining:
    """What the training part of an epoch reports to its validation record."""

    frozen: list[str]
    train_loss: float
    seconds: float
    pairs: int


def train_epoch(run: TrainingRun) -> EpochTraining | None:
    """Train the epoch ``run.state.epoch`` from its batch ``run.state.batch_in_epoch``; None when ``max_steps``
    stopped the run inside it (``last.pt`` then holds the position)."""
    cfg, state, epoch, first = run.cfg, run.state, run.state.epoch, run.state.batch_in_epoch
    set_epoch_lr(run.optimizer, cfg, epoch)
    run.loss_fn.set_epoch(epoch)
    frozen = apply_freeze(run.model, cfg, epoch)
    run.step.wrap_for(frozen, run.device)
    ramp = cfg.optim.unfreeze_ramp and epoch == unfreeze_epoch(cfg)
    data = epoch_loader(run.train_set, run.collator, cfg, run.ctx, run.device, epoch, first)
    n = len(data.batches)
    bar = Progress(n * cfg.batch_size, f"epoch {epoch + 1}/{cfg.epochs}", "pairs", run.progress_stream)
    bar.count = first * cfg.batch_size
    run.model.train()
    tally = LossTally(run.device, run.ctx.enabled, *state.epoch_loss)
    t0 = time.perf_counter()
    for b, batch in enumerate(data.loader, start=first):
        # the VSE∞ unfreeze ramp: the loss grows linearly over the first epoch after the backbone unfreezes
        weight = (b + 1) / n if ramp else None
        tally.add(run.step(batch.to(run.device, non_blocking=True), state.step, data.shards[b], weight))
        state.step += 1
        done = run.max_steps is not None and state.step >= run.max_steps
        checkpoint = done or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and b + 1 < n)
        if checkpoint or state.step % LOSS_SYNC_STEPS == 0 or b + 1 == n:
            bar.postfix["loss"] = tally.read_back()
        bar.update(len(data.batches[b]))
        if checkpoint:
            state.batch_in_epoch, state.epoch_loss = b + 1, (tally.total, tally.count)
            run.save_last()
        if done:
            bar.close()
            return None
    bar.close()
    seconds = time.perf_counter() - t0
    return EpochTraining(frozen, tally.mean, seconds, bar.count - first * cfg.batch_size)


def end_epoch(run: TrainingRun, trained: EpochTraining) -> None:
    """Validate the epoch just trained (rank 0; the others wait), keep ``best.pt`` when it improved, write
    ``last.pt``, ``metrics.jsonl`` and ``curves.png`` and log the epoch; the run moves to the next epoch."""
    state, main = run.state, run.ctx.is_main
    record = validation_record(run, trained) if main else None  # the other processes wait in broadcast_object
    record = broadcast_object(record)
    state.history.append(record)
    improved = record["val_rsum"] > state.best_rsum
    if improved:
        state.best_rsum, state.best_epoch = record["val_rsum"], state.epoch + 1
        if main:
            save_best(run.run_dir, run.model, run.cfg, state, run.ema)
    state.epoch, state.batch_in_epoch, state.epoch_loss = state.epoch + 1, 0, (0.0, 0)
    run.save_last()
    if main:
        write_metrics(run.run_dir, state.history)
        plot_curves(run.run_dir, state.history)
    run.report(epoch_line(record, run.cfg.epochs, improved))


def validation_record(run: TrainingRun, trained: EpochTraining) -> dict[str, Any]:
    """The epoch's line of ``metrics.jsonl``: its training figures and the validation metrics of the weights it
    scores (the average with ``optim.ema_decay``)."""
    t1 = time.perf_counter()
    with weights_to_score(run.model, run.ema):
        val = evaluate_model(run.model, run.val_set, batch_size=run.cfg.eval_batch_size)
    return {
        "epoch": run.state.epoch + 1,
        "step": run.state.step,
        "lr": run.optimizer.param_groups[0]["lr"],
        "negatives": run.loss_fn.current_negatives,
        "frozen": trained.frozen,
        "train_loss": trained.train_loss,
        **{f"val_{k}": v for k, v in val.items()},
        "train_seconds": round(trained.seconds, 3),
        "pairs_per_second": round(trained.pairs / max(trained.seconds, 1e-9), 1),
        "val_seconds": round(time.perf_counter() - t1, 3),
    }
