"""The built-in demo: train VSE∞ on generated scenes with GPO, mean and max pooling, and compare.

Everything runs from generated data (no files, no downloads), on the CPU in a few minutes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from .config import apply_overrides
from .data.factory import build_dataset
from .evaluation import evaluate_sims, format_metrics_table
from .evaluation.retrieval import encode_dataset
from .io import atomic_write_json
from .plots import plot_recall_bars, plot_training_curves
from .presets import get_preset
from .training import train

POOLINGS = ("gpo", "mean", "max")


def run_demo(
    out_dir: str | Path = "runs/demo",
    poolings: tuple[str, ...] = POOLINGS,
    overrides: list[str] | None = None,
    log: Callable[[str], None] | None = None,
    progress_stream: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    """Train the ``demo_<pooling>`` presets on the same generated data and evaluate them on its test split.

    Args:
        out_dir: folder for the runs (``<out_dir>/<pooling>/``), ``results.json`` and the figures.
        poolings: which poolings to compare.
        overrides: ``key=value`` config overrides applied to every run (e.g. ``epochs=3``).
        log: called with progress lines; ``None`` is silent.
        progress_stream: where progress bars go.

    Returns:
        ``{"results": {pooling: test metrics}, "table": str, "chance_r1": float, ...}``.
    """
    say = log or (lambda _m: None)
    out = Path(out_dir)
    cfgs = {p: apply_overrides(get_preset(f"demo_{p}"), overrides) for p in poolings}
    data_cfg = next(iter(cfgs.values())).data
    t0 = time.perf_counter()
    datasets = {
        "train": build_dataset(data_cfg, data_cfg.train_split),
        "val": build_dataset(data_cfg, data_cfg.val_split, max_images=data_cfg.val_max_images),
    }
    test = build_dataset(data_cfg, data_cfg.test_split)
    say(
        f"built-in data: {datasets['train'].num_images} train / {datasets['val'].num_images} val / "
        f"{test.num_images} test scenes, {test.captions_per_image} captions each ({time.perf_counter() - t0:.1f}s)"
    )
    results: dict[str, dict[str, float]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    for pooling, cfg in cfgs.items():
        say(f"--- {pooling} pooling ---")
        t1 = time.perf_counter()
        res = train(cfg, out / pooling, log=say, progress_stream=progress_stream, datasets=datasets)
        img, cap = encode_dataset(res.model, test, cfg.eval_batch_size)
        results[pooling] = evaluate_sims(res.model.similarity(img, cap), captions_per_image=test.captions_per_image)
        histories[pooling] = res.history
        timings[pooling] = round(time.perf_counter() - t1, 1)
    names = {"gpo": "VSE∞ (GPO)", "mean": "mean pooling", "max": "max pooling"}
    labelled = {names.get(p, p): m for p, m in results.items()}
    chance = 100.0 / test.num_images
    table = format_metrics_table(labelled, title=f"Test split of the built-in data ({test.num_images} images)")
    plot_training_curves({names.get(p, p): h for p, h in histories.items()}, out / "curves.png")
    plot_recall_bars(labelled, out / "recall.png", title="Built-in data, test split")
    summary = {
        "results": results,
        "table": table,
        "chance_r1": chance,
        "seconds": timings,
        "num_test_images": test.num_images,
        "overrides": list(overrides or []),
    }
    atomic_write_json(summary, out / "results.json")
    return summary
