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


def line_style(index: int) -> str:
    """Solid for the first 10 lines of a plot, dashed after them: the default colour cycle has 10 colours, so
    no two lines look alike."""
    return "-" if index < 10 else "--"


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
    for i, (label, c) in enumerate(curves.items()):
        axes[0].plot(c["k"], c["i2t"], label=label, linestyle=line_style(i))
        axes[1].plot(c["k"], c["t2i"], label=label, linestyle=line_style(i))
    axes[0].set(xlabel="K", ylabel="recall@K (%)", title=f"{title} image → text".strip())
    axes[1].set(xlabel="K", title=f"{title} text → image".strip())
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_retrievals(
    queries: list[str],
    results: list[list[tuple[Any, float, bool]]],
    path: str | Path,
    title: str = "",
) -> Path:
    """A grid of text -> image retrievals: one row per query, its top results left to right.

    Args:
        queries: the query captions.
        results: per query, its ranked results as ``(image, score, is_ground_truth)``; an image is an
            H×W×3 uint8 array, a PIL image or a file path.
        path: the PNG to write (atomically).
        title: optional figure title.
    """
    from .data.images import as_pixels

    plt = _pyplot()
    cols = max((len(r) for r in results), default=1)
    fig, axes = plt.subplots(len(queries), cols, figsize=(2.1 * cols, 2.35 * len(queries)), squeeze=False)
    for row, (query, ranked) in enumerate(zip(queries, results)):
        for col in range(cols):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(ranked):
                ax.axis("off")
                continue
            image, score, hit = ranked[col]
            ax.imshow(as_pixels(image, col))
            for side in ax.spines.values():
                side.set_color("tab:green" if hit else "0.7")
                side.set_linewidth(4 if hit else 1)
            ax.set_xlabel(f"#{col + 1}  {score:.3f}", fontsize=8)
        wrapped = query if len(query) <= 70 else query[:67] + "..."
        axes[row][0].set_title(wrapped, fontsize=8, loc="left", x=0.0)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)
