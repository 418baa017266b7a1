"""What a run reports: ``metrics.jsonl`` (one record per epoch), ``curves.png``, and its log lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..io import atomic_write_text
from ..models import VSEModel


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one JSON line per epoch record."""
    atomic_write_text("".join(json.dumps(r) + "\n" for r in history), run_dir / "metrics.jsonl")


def plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """``curves.png``: training loss and validation rsum per epoch."""
    from ..plots import plot_training_curves

    plot_training_curves({run_dir.name: history}, run_dir / "curves.png")


def epoch_line(record: dict[str, Any], epochs: int, improved: bool) -> str:
    """The log line of an epoch's ``record``, out of ``epochs``; ``improved``: a new best validation rsum."""
    val = {k[4:]: v for k, v in record.items() if k.startswith("val_") and k != "val_seconds"}
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.3f} ({record['negatives']}), "
        f"val rsum {val['rsum']:.1f} (i2t R@1 {val['i2t_r1']:.1f}, t2i R@1 {val['t2i_r1']:.1f})"
        f"{' *best*' if improved else ''}, {record['pairs_per_second']:.0f} pairs/s"
    )


def start_line(cfg: TrainConfig, train_set: Any, val_set: Any, model: VSEModel, device: torch.device, world_size: int) -> str:
    """The log line of a new run: its data, model size and device (and processes, when data-parallel)."""
    n_params = sum(p.numel() for p in model.parameters())
    return (
        f"training {cfg.name}: {len(train_set)} pairs ({train_set.num_images} images), "
        f"{val_set.num_images} val images, {n_params / 1e6:.2f}M parameters, vocab {len(model.tokenizer)}, device {device}"
        + (f" ({world_size} processes, {cfg.batch_size} pairs per global batch)" if world_size > 1 else "")
    )
