"""Benchmark the data paths that run before any model: the built-in data, rendered scenes and image batches.

Usage::

    python benchmarks/bench_data.py [--repeats 5] [--threads 1] [--out benchmarks/results/bench_data.json]

Three timings, each the median of ``--repeats`` rounds after one warm-up round (the three run in turn within a
round, ``benchmarks/timing.py``), against the target the README states:

1. ``make_synthetic()``: the default built-in feature data (4,000 / 500 / 500 images with their captions), which
   ``vsekit demo`` and every preset on built-in data generate at start-up ("about a second"; target 10 s).
2. Rendered scenes: generating 10,000 64-px images of ``data.synthetic.render=true`` with their captions (the
   raw-image models' built-in data; target 20 s).
3. ``PixelInput(224).collate(..., train=True)``: one training batch of 128 images of 256×256 px (crop, resize,
   flip, normalise into one tensor; target 2 s, so that it never starves a CPU training step).

The targets used to be wall-clock asserts in the unit tests, which fail on a loaded machine and say nothing
when they pass there; they are measured here instead. It prints a table and writes the numbers as JSON; the
exit status is 1 when a median misses its target.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
from timing import interleaved_times  # benchmarks/timing.py (benchmarks/ is on sys.path when run)

REPO = Path(__file__).resolve().parents[1]


def _smooth_images(n: int, size: int) -> list[np.ndarray]:
    """Smooth random RGB photos-to-be (upsampled noise), like decoded JPEGs of natural images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        out.append(np.array(Image.fromarray(small).resize((size, size), Image.BICUBIC)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the targets are per core)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_data.json")
    args = parser.parse_args(argv)

    import torch

    from vsekit.data import make_synthetic
    from vsekit.data.images import PixelInput
    from vsekit.io import atomic_write_json

    torch.set_num_threads(args.threads)

    def synthetic() -> None:
        data = make_synthetic()
        assert data["train"].num_images == 4000

    def rendered() -> None:
        ds = make_synthetic(num_train=10000, num_val=0, num_test=0, render=True, image_size=64, seed=1)["train"]
        images = [ds.image(i) for i in range(ds.num_images)]
        assert len(images) == 10000

    photos = _smooth_images(128, 256)
    pixels = PixelInput(224)

    def collate() -> None:
        x, _ = pixels.collate(photos, train=True)
        assert x.shape == (128, 3, 224, 224)

    cases = {
        "make_synthetic(): 5,000 feature images + 25,000 captions": (synthetic, 10.0),
        "rendered scenes: 10,000 images of 64 px + captions": (rendered, 20.0),
        "collate: 128 images 256 px -> 224 px, training": (collate, 2.0),
    }
    times = interleaved_times({label: fn for label, (fn, _) in cases.items()}, args.repeats)
    rows = []
    for label, (_, target) in cases.items():
        med = statistics.median(times[label])
        rows.append({"case": label, "median_seconds": round(med, 3), "seconds": [round(t, 3) for t in times[label]],
                     "target_seconds": target, "met": med < target})  # fmt: skip

    result = {
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cases": rows,
    }
    print(f"{result['threads']} torch thread(s), median of {args.repeats} runs")
    print("| case | median s | target s | met |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['median_seconds']:.2f} | {r['target_seconds']:.0f} | {'yes' if r['met'] else 'NO'} |")
    atomic_write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
