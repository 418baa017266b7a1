"""Benchmark feature extraction: the backbone's folded inference form against the plain backbone, side by side.

Usage::

    python benchmarks/bench_extract.py [--backbone efficientnet_lite0] [--batches 12] [--batch-size 16]
        [--data ../shared/datasets/rsicd/dataset_rsicd.json ../shared/datasets/rsicd/images --images 1000]
        [--out benchmarks/results/bench_extract.json]

1. **Forward pass.** ``create_backbone(name)`` in eval mode with channels-last memory (what ``vsekit extract``
   ran before the folded form) and ``backbone.for_inference()`` (what it runs now) get the same random
   batches of 224-px images, alternately, one batch at a time, so that load changes on a shared machine hit
   both alike. Reported: the median seconds per batch of each, images/s and the ratio, and the largest
   difference between their feature maps (they must agree up to float rounding).
2. **End to end** (with ``--data``): ``vsekit.extract.extract_features`` over the first ``--images`` images of
   the JSON's ``val`` split into a temporary folder: decoding, resizing, the forward passes and the float16
   writes, as a user runs it. Reported: images/s, and the minutes every split of the dataset takes at that
   rate, which is also the cost of each extra view (``vsekit extract --views``).

It prints a table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _forward(args: argparse.Namespace) -> dict:
    import torch

    from vsekit.backbones import create_backbone

    plain = create_backbone(args.backbone, pretrained=True).eval().to(memory_format=torch.channels_last)
    folded = create_backbone(args.backbone, pretrained=True).for_inference()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch_size, 3, 224, 224, generator=gen) for _ in range(3)]
    times: dict[str, list[float]] = {"plain": [], "folded": []}
    max_diff = 0.0
    with torch.inference_mode():
        for net in (plain, folded):  # warm-up
            net(batches[0].contiguous(memory_format=torch.channels_last))
        for i in range(args.batches):
            x = batches[i % len(batches)].contiguous(memory_format=torch.channels_last)
            outs = {}
            for name, net in (("plain", plain), ("folded", folded))[:: 1 if i % 2 == 0 else -1]:
                t0 = time.perf_counter()
                outs[name] = net(x)
                times[name].append(time.perf_counter() - t0)
            max_diff = max(max_diff, float((outs["plain"] - outs["folded"]).abs().max()))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch_size": args.batch_size,
        "batches": args.batches,
        "median_seconds": {k: round(v, 4) for k, v in med.items()},
        "images_per_second": {k: round(args.batch_size / v, 1) for k, v in med.items()},
        "speedup": round(med["plain"] / med["folded"], 2),
        "max_abs_difference": max_diff,
    }


def _end_to_end(args: argparse.Namespace) -> dict:
    from vsekit.data.karpathy import KarpathyJSON
    from vsekit.extract import extract_features

    ann, images = args.data
    records = KarpathyJSON(ann)
    total = sum(len(records.records([s])) for s in ("train", "val", "test"))
    with tempfile.TemporaryDirectory() as tmp:
        result = extract_features(ann, images, tmp, splits=["val"], backbone=args.backbone, batch_size=args.batch_size,
                                  max_images=args.images, progress_stream=None)  # fmt: skip
    timing = result["timing"]["val"]
    rate = timing["images_per_second"]
    return {
        "images": timing["images"],
        "seconds": timing["seconds"],
        "images_per_second": rate,
        "dataset_images": total,
        "dataset_minutes": round(total / rate / 60, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per form (default 12)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", nargs=2, metavar=("ANNOTATIONS", "IMAGES"), help="also time vsekit extract end to end")
    parser.add_argument("--images", type=int, default=1000, help="with --data: images to extract (default 1000)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_extract.json")
    args = parser.parse_args(argv)

    import torch

    from vsekit.io import atomic_write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    forward = _forward(args)
    result = {
        "backbone": args.backbone,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "forward": forward,
    }
    print(f"{args.backbone}, {result['threads']} threads, batch {args.batch_size}, {args.batches} batches each, medians")
    print("| form | s / batch | images/s |")
    print("|---|---|---|")
    for name, label in (("plain", "plain backbone, channels-last"), ("folded", "for_inference() (folded)")):
        print(f"| {label} | {forward['median_seconds'][name]:.3f} | {forward['images_per_second'][name]:.1f} |")
    print(f"speed-up {forward['speedup']:.2f}x; largest feature difference {forward['max_abs_difference']:.2e}")
    if args.data:
        e2e = _end_to_end(args)
        result["end_to_end"] = e2e
        print(f"vsekit extract end to end: {e2e['images']} images in {e2e['seconds']:.1f} s = "
              f"{e2e['images_per_second']:.1f} images/s; the {e2e['dataset_images']} images of the dataset: "
              f"{e2e['dataset_minutes']:.1f} min per view")  # fmt: skip
    atomic_write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
