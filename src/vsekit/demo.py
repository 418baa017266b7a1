"""The built-in demo: train VSE∞ on generated scenes with GPO, mean and max pooling, and compare.

Everything runs from generated data (no files, no downloads), on the CPU in a few minutes.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

from .config import apply_overrides
from .data.factory import build_dataset
from .evaluation import evaluate_model, format_metrics_table
from .io import atomic_write_json
from .plots import plot_recall_bars, plot_training_curves
from .presets import get_preset
from .training import train

POOLINGS = ("gpo", "mean", "max")


def _train_and_test(pooling: str, cfg: Any, out: Path, threads: int | None, verbose: bool) -> dict[str, Any]:
    """Train one demo model and evaluate it on the test split (runs in a worker process when parallel)."""
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    res = train(
        cfg, out / pooling, log=(lambda m: print(f"[{pooling}] {m}", flush=True)) if verbose else None,
        progress_stream=sys.stderr if verbose and threads is None else None,
    )  # fmt: skip
    test = build_dataset(cfg.data, cfg.data.test_split, evaluation=True)
    metrics = evaluate_model(res.model, test, batch_size=cfg.eval_batch_size)
    return {
        "metrics": metrics,
        "history": res.history,
        "seconds": round(time.perf_counter() - t0, 1),
        "num_test_images": test.num_images,
    }


def run_demo(
    out_dir: str | Path = "runs/demo",
    poolings: tuple[str, ...] = POOLINGS,
    overrides: list[str] | None = None,
    log: Callable[[str], None] | None = None,
    jobs: int = 0,
) -> dict[str, Any]:
    """Train the ``demo_<pooling>`` presets on the same generated data and evaluate them on its test split.

    Args:
        out_dir: folder for the runs (``<out_dir>/<pooling>/``), ``results.json`` and the figures.
        poolings: which poolings to compare.
        overrides: ``key=value`` config overrides applied to every run (e.g. ``epochs=3``).
        log: called with progress lines; ``None`` is silent.
        jobs: models trained at once in worker processes (0: one per model, up to the CPU count; 1: in
            this process, one after the other). Small models on a CPU use cores better side by side.

    Returns:
        ``{"results": {pooling: test metrics}, "table": str, "chance_r1": float, ...}``.
    """
    report = log or (lambda _m: None)
    out = Path(out_dir)
    cfgs = {p: apply_overrides(get_preset(f"demo_{p}"), overrides) for p in poolings}
    cores = os.cpu_count() or 1
    jobs = jobs or min(len(cfgs), cores)
    t0 = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    if jobs <= 1:
        for pooling, cfg in cfgs.items():
            report(f"--- {pooling} pooling ---")
            runs[pooling] = _train_and_test(pooling, cfg, out, None, log is not None)
    else:
        threads = max(1, cores // jobs)
        report(f"training {len(cfgs)} models ({', '.join(cfgs)}) in {jobs} processes, {threads} thread(s) each")
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {p: pool.submit(_train_and_test, p, cfg, out, threads, log is not None) for p, cfg in cfgs.items()}
            for pooling, fut in futures.items():
                runs[pooling] = fut.result()
    names = {"gpo": "VSE∞ (GPO)", "mean": "mean pooling", "max": "max pooling"}
    results = {p: r["metrics"] for p, r in runs.items()}
    labelled = {names.get(p, p): m for p, m in results.items()}
    n_test = next(iter(runs.values()))["num_test_images"]
    table = format_metrics_table(labelled, title=f"Test split of the built-in data ({n_test} images)")
    plot_training_curves({names.get(p, p): r["history"] for p, r in runs.items()}, out / "curves.png")
    plot_recall_bars(labelled, out / "recall.png", title="Built-in data, test split")
    summary = {
        "results": results,
        "table": table,
        "chance_r1": 100.0 / n_test,
        "seconds": {p: r["seconds"] for p, r in runs.items()},
        "total_seconds": round(time.perf_counter() - t0, 1),
        "num_test_images": n_test,
        "overrides": list(overrides or []),
    }
    atomic_write_json(summary, out / "results.json")
    return summary
