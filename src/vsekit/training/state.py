"""What a run folder keeps between sessions: the resume point ``last.pt`` (weights, optimizer, gradient
scaler, weight average, RNG state, position, history) and the model-selection checkpoint ``best.pt``; and
the check that a resumed run is the same run."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import config_from_checkpoint, read_checkpoint, save_checkpoint
from ..config import TrainConfig, to_dict
from ..data.files import read_extractor_settings
from ..errors import ConfigError
from ..models import VSEModel
from .ema import WeightEMA, weights_to_score

IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable")
"""Optimizer group options that choose how the update runs on this machine; a resume keeps the fresh optimizer's."""


def rng_state() -> dict[str, Any]:
    """The global RNG state (CPU, and every CUDA device when there is one), as ``last.pt`` stores it."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def comparable_config(cfg: TrainConfig) -> dict[str, Any]:
    """The parts of a config that must not change when a run is resumed (the name is only a label, and a
    data path counts by where it points: relative and absolute spellings of one folder are the same)."""
    d = to_dict(cfg)
    for key in ("name", "epochs", "workers", "device", "eval_batch_size", "compile", "cuda_graphs",
                "graph_caption_buckets", "graph_set_buckets"):
        d.pop(key)
    for key in ("path", "features", "images"):
        if d["data"].get(key):
            d["data"][key] = str(Path(d["data"][key]).expanduser().resolve())
    return d


def read_resume_point(run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """The run folder's ``last.pt`` (None when it has none).

    Raises:
        ConfigError: the folder holds a run and ``resume`` is False.
    """
    if not (run_dir / "last.pt").is_file():
        return None
    if not resume:
        raise ConfigError(f"{run_dir}: already holds a run (last.pt); resume it or choose another run folder")
    return read_checkpoint(run_dir / "last.pt")


def check_same_run(ckpt: dict[str, Any] | None, cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse to resume ``ckpt`` (``last.pt``) with a config that differs in what :func:`comparable_config` keeps."""
    if ckpt is not None and comparable_config(config_from_checkpoint(ckpt)) != comparable_config(cfg):
        raise ConfigError(f"{run_dir}: holds a run with a different config; resume it unchanged or use another folder")


@dataclass
class RunState:
    """Where a run stands, beside its weights: what ``last.pt`` saves and a resumed run starts from.

    Attributes:
        epoch: the epoch to train next (0-based; the number of completed epochs).
        batch_in_epoch: the batch of ``epoch`` to train next (a run stopped inside an epoch).
        step: the number of completed optimisation steps.
        best_rsum, best_epoch: the best validation rsum so far and its epoch (1-based; -1: none yet).
        history: one record per completed epoch (the lines of ``metrics.jsonl``).
        epoch_loss: the loss sum and step count read back so far in ``epoch`` (a run stopped inside it).
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_rsum: float = -math.inf
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_loss: tuple[float, int] = (0.0, 0)


def restore_training_state(
    ckpt: dict[str, Any],
    model: VSEModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ema: WeightEMA | None,
) -> RunState:
    """Load ``last.pt`` (``ckpt``) into the model, optimizer, scaler and weight average, and restore the global
    RNG state; returns the run's position."""
    model.load_state_dict(ckpt["model"])
    # how the update runs is this machine's choice, not the run's state: a CPU run saves fused=True, a
    # CUDA-graph run capturable=True (the step that runs this resume sets it again where it captures)
    kernels = [{k: g[k] for k in IMPLEMENTATION_FLAGS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, flags in zip(optimizer.param_groups, kernels):
        group.update(flags)
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    state = RunState(
        epoch=ckpt["epoch"],
        batch_in_epoch=ckpt.get("batch_in_epoch", 0),
        step=ckpt["step"],
        best_rsum=ckpt["best_rsum"],
        best_epoch=ckpt["best_epoch"],
        history=json.loads(ckpt.get("history", "[]")),
        epoch_loss=ckpt.get("epoch_loss", (0.0, 0)),
    )
    set_rng_state(ckpt["rng"])
    return state


def _extractor_entry(cfg: TrainConfig) -> dict[str, Any]:
    """``{"extractor": settings}`` when the run trains on ``vsekit extract`` features: the checkpoint then knows how
    to turn photos into its features (``vsekit encode MODEL PHOTOS``), wherever it goes."""
    settings = read_extractor_settings(cfg.data.features) if cfg.data.features else None
    return {"extractor": settings} if settings is not None else {}


def save_last(
    run_dir: Path,
    model: VSEModel,
    cfg: TrainConfig,
    state: RunState,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ema: WeightEMA | None,
) -> None:
    """Write ``last.pt``: the run resumes where ``state`` stands."""
    save_checkpoint(
        run_dir / "last.pt", model, cfg,
        epoch=state.epoch, batch_in_epoch=state.batch_in_epoch, step=state.step, best_rsum=state.best_rsum,
        best_epoch=state.best_epoch, optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict() if scaler.is_enabled() else {}, rng=rng_state(),
        history=json.dumps(state.history), epoch_loss=state.epoch_loss,
        **({"ema": ema.state_dict()} if ema is not None else {}), **_extractor_entry(cfg),
    )  # fmt: skip


def save_best(run_dir: Path, model: VSEModel, cfg: TrainConfig, state: RunState, ema: WeightEMA | None) -> None:
    """Write ``best.pt`` after the epoch ``state.best_epoch``: the weights that validation scored."""
    with weights_to_score(model, ema):
        save_checkpoint(
            run_dir / "best.pt", model, cfg,
            epoch=state.best_epoch, step=state.step, best_rsum=state.best_rsum, best_epoch=state.best_epoch,
            **_extractor_entry(cfg),
        )  # fmt: skip


def load_best(run_dir: Path, model: VSEModel) -> None:
    """Load the weights of the run's ``best.pt`` into ``model`` (nothing when the run has none yet)."""
    best = read_checkpoint(run_dir / "best.pt") if (run_dir / "best.pt").is_file() else None
    if best is not None:
        model.load_state_dict(best["model"])
