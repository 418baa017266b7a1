"""Benchmark of the retrieval metrics: vectorised evaluation vs the similarity matmul and a plain loop.

Times, as the median over ``--repeats`` rounds (the timed functions alternate within a round):

(a) the similarity matmul alone (images x dim @ dim x captions, float32);
(b) the matmul followed by ``evaluate_sims``;
(c) the matmul followed by a plain per-query loop (sort each row / column). The loop is timed once
    on a subset of queries and extrapolated linearly to all queries.

The target is (b) / (a) <= 1.5: evaluating costs at most half a matmul. The fast and plain ranks
are checked to agree on the subset. Results go to a JSON file, written atomically.

Usage:
    python benchmarks/bench_eval.py [--images 5000 --captions-per-image 5 --dim 1024 --repeats 5
                                     --out benchmarks/results/bench_eval.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from timing import interleaved_times  # benchmarks/timing.py (benchmarks/ is on sys.path when run)
from vsekit.evaluation import evaluate_sims, i2t_ranks, t2i_ranks
from vsekit.io import atomic_write_json

TARGET_RATIO = 1.5


def plain_i2t(sims: np.ndarray, k: int, rows: int) -> np.ndarray:
    """Plain loop over the first ``rows`` image queries: sort the row, ground truth first among ties."""
    m = sims.shape[1]
    owner = np.arange(m) // k
    ranks = np.empty(rows, dtype=np.int64)
    for i in range(rows):
        is_gt = owner == i
        order = np.lexsort((~is_gt, -sims[i]))
        ranks[i] = np.flatnonzero(is_gt[order])[0]
    return ranks


def plain_t2i(sims: np.ndarray, k: int, cols: int) -> np.ndarray:
    """Plain loop over the first ``cols`` caption queries: sort the column, its image first among ties."""
    images = np.arange(sims.shape[0])
    ranks = np.empty(cols, dtype=np.int64)
    for j in range(cols):
        is_gt = images == j // k
        order = np.lexsort((~is_gt, -sims[:, j]))
        ranks[j] = np.flatnonzero(is_gt[order])[0]
    return ranks


def make_embeddings(n: int, k: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random L2-normalised embeddings; each caption is its image plus much noise, which gives
    COCO-5K-like recalls (rsum about 400) rather than trivial 0 or 100."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    noise = torch.randn(n * k, dim, generator=gen) / dim**0.5
    captions = torch.nn.functional.normalize(images.repeat_interleave(k, dim=0) * 0.1 + noise, dim=1)
    return images, captions


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 1 if the fast and plain ranks disagree, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--subset-images", type=int, default=500, help="image queries timed in the plain loop")
    parser.add_argument("--subset-captions", type=int, default=2500, help="caption queries timed in the plain loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/bench_eval.json")
    args = parser.parse_args(argv)
    n, k = args.images, args.captions_per_image
    m = n * k
    sub_i, sub_t = min(args.subset_images, n), min(args.subset_captions, m)

    images, captions = make_embeddings(n, k, args.dim, args.seed)
    cap_t = captions.T.contiguous()
    sims = (images @ cap_t).numpy()
    runs = interleaved_times(
        {
            "matmul": lambda: images @ cap_t,
            "matmul_plus_evaluate": lambda: evaluate_sims(images @ cap_t, k),
            "evaluate_only": lambda: evaluate_sims(sims, k),
        },
        args.repeats,
    )
    t_matmul, t_fast, t_eval = (statistics.median(runs[key]) for key in runs)
    start = time.perf_counter()
    plain_i = plain_i2t(sims, k, sub_i)
    t_plain_i2t = time.perf_counter() - start
    start = time.perf_counter()
    plain_t = plain_t2i(sims, k, sub_t)
    t_plain_t2i = time.perf_counter() - start
    t_plain_eval = t_plain_i2t * n / sub_i + t_plain_t2i * m / sub_t
    t_plain = t_matmul + t_plain_eval

    agree = bool(
        np.array_equal(i2t_ranks(sims, k)[:sub_i], plain_i) and np.array_equal(t2i_ranks(sims, k)[:sub_t], plain_t)
    )
    metrics = evaluate_sims(sims, k)
    ratio = t_fast / t_matmul
    passed = ratio <= TARGET_RATIO

    rows = [
        ("(a) matmul alone", t_matmul, "median"),
        ("(b) matmul + evaluate_sims", t_fast, "median"),
        ("    evaluate_sims alone", t_eval, "median, on a precomputed matrix"),
        ("(c) matmul + plain loop", t_plain, f"extrapolated from {sub_i} image + {sub_t} caption queries"),
        ("    plain loop only", t_plain_eval, "extrapolated"),
    ]
    print(f"sims {n} x {m} float32 from {args.dim}-d embeddings; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; repeats {args.repeats}")  # fmt: skip
    for label, seconds, note in rows:
        print(f"{label:<34} {seconds:9.3f} s   ({note})")
    print(f"(b)/(a) = {ratio:.3f}  target <= {TARGET_RATIO}: {'PASS' if passed else 'FAIL'}")
    print(f"(c)/(b) = {t_plain / t_fast:.1f}x   plain loop / evaluate_sims alone = {t_plain_eval / t_eval:.0f}x")
    print(f"fast and plain ranks agree on the subset: {agree}")
    print("metrics: " + " ".join(f"{key}={value:.2f}" for key, value in metrics.items()))

    result = {
        "config": {
            "images": n,
            "captions_per_image": k,
            "captions": m,
            "dim": args.dim,
            "dtype": "float32",
            "repeats": args.repeats,
            "seed": args.seed,
        },
        "seconds": {
            "matmul": t_matmul,
            "matmul_plus_evaluate": t_fast,
            "evaluate_only": t_eval,
            "matmul_plus_plain_loop_extrapolated": t_plain,
            "plain_loop_extrapolated": t_plain_eval,
            "plain_i2t_subset": t_plain_i2t,
            "plain_t2i_subset": t_plain_t2i,
            "runs": runs,
        },
        "plain_subset": {
            "image_queries": sub_i,
            "caption_queries": sub_t,
            "note": "the plain loop ran once on these queries; its time is extrapolated linearly to all queries",
        },
        "ratios": {
            "fast_over_matmul": ratio,
            "plain_over_fast": t_plain / t_fast,
            "plain_loop_over_evaluate_only": t_plain_eval / t_eval,
        },
        "target": {"fast_over_matmul_max": TARGET_RATIO, "passed": passed},
        "fast_and_plain_agree": agree,
        "metrics": metrics,
        "environment": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
    }
    atomic_write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
