"""Figures: training curves and pooling comparisons (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_training_curves(runs: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Plot training loss and validation rsum per epoch for one or more runs into a PNG.

    Args:
        runs: run label -> its ``metrics.jsonl`` records (``epoch``, ``train_loss``, ``val_rsum``).
        path: the PNG to write (atomically).
    """
    plt = _pyplot()
    fig, (ax_loss, ax_rsum) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, history in runs.items():
        epochs = [r["epoch"] for r in history]
        ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", ms=3, label=label)
        ax_rsum.plot(epochs, [r["val_rsum"] for r in history], marker="o", ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss (sum over batch)", title="Training loss")
    ax_rsum.set(xlabel="epoch", ylabel="validation rsum", title="Validation rsum (max 600)")
    for ax in (ax_loss, ax_rsum):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_recall_bars(results: dict[str, dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Grouped bars of R@1/5/10 in both directions for several named results."""
    plt = _pyplot()
    keys = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
    labels = ["I→T R@1", "I→T R@5", "I→T R@10", "T→I R@1", "T→I R@5", "T→I R@10"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / max(1, len(results))
    for i, (name, metrics) in enumerate(results.items()):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [metrics[k] for k in keys], width, label=f"{name} (rsum {metrics['rsum']:.0f})")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], labels)
    ax.set(ylabel="recall (%)", title=title, ylim=(0, 100))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_recall_curves(curves: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """R@K against K in both directions for several named results (from ``recall_curve``)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for label, c in curves.items():
        axes[0].plot(c["k"], c["i2t"], label=label)
        axes[1].plot(c["k"], c["t2i"], label=label)
    axes[0].set(xlabel="K", ylabel="recall@K (%)", title=f"{title} image → text".strip())
    axes[1].set(xlabel="K", title=f"{title} text → image".strip())
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)
