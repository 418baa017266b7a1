"""Benchmark GPO against max and mean pooling, and the GPO weight generator strategies.

Usage::

    python benchmarks/bench_gpo.py [--repeats N] [--out benchmarks/results/bench_gpo.json]

Workloads (batch 128, feature size 1024): ``image-36`` (36 regions, all sets full),
``image-20..36`` (36 regions after size augmentation, random sizes 20..36) and ``text-8..30``
(captions of 8..30 words). For each it times, as the median over ``--repeats`` interleaved runs
after warm-up:

* training step of the pooling alone: forward + backward (GPO in train mode, so the weight
  generator runs and receives gradients), for GPO (default ``method="auto"`` and plain
  ``torch.sort``), max pooling and mean pooling;
* inference under ``torch.inference_mode`` with GPO in eval mode (weights cached per set size),
  for GPO (``auto``, ``torch.sort`` on a transposed copy, and the official-style ``sort`` along
  the set axis), max pooling and mean pooling;
* the weight generator alone, forward + backward: the naive per-sample loop (one BiGRU call per
  set, as in a literal reading of VSE∞) against one packed BiGRU pass over the distinct sizes.

It prints a table and writes JSON (atomically) with the environment, all timings, the ratios to
max pooling and whether the target "GPO inference within 1.5x of max pooling" is met.
The machine's load average is recorded too: on a shared machine, timings are only comparable
within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

from timing import interleaved_times  # benchmarks/timing.py (benchmarks/ is on sys.path when run)
from vsekit.io import atomic_write_json
from vsekit.pooling import GPO, MaxPool, MeanPool

TARGET_RATIO = 1.5
TARGET = f"GPO inference within {TARGET_RATIO}x of max pooling"


def median_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median wall time in ms of each function (:func:`timing.interleaved_times`: one call of each per round)."""
    return {name: statistics.median(t) * 1e3 for name, t in interleaved_times(fns, repeats, warmup).items()}


def make_workloads(batch: int, dim: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    workloads = {}
    for name, length, low in (("image-36", 36, 36), ("image-20..36", 36, 20), ("text-8..30", 30, 8)):
        lengths = torch.randint(low, length + 1, (batch,), generator=g)
        lengths[0] = length
        features = torch.randn(batch, length, dim, generator=g)
        features[torch.arange(length) >= lengths.unsqueeze(1)] = 0
        workloads[name] = (features, lengths)
    return workloads


def official_sort_pool(gpo: GPO, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The official code path: sort along the set axis (dim 1) of the masked features."""
    weights = gpo.cached_weights(lengths, features.device, features.dtype)
    mask = (torch.arange(features.shape[1]) < lengths.unsqueeze(1)).unsqueeze(-1)
    ranked = features.masked_fill(~mask, float("-inf")).sort(dim=1, descending=True).values
    return (ranked.masked_fill(~mask, 0) * weights.unsqueeze(-1)).sum(1)


def bench_workload(features: torch.Tensor, lengths: torch.Tensor, repeats: int, warmup: int) -> dict[str, dict]:
    torch.manual_seed(0)
    gpo, gpo_sort = GPO(), GPO(method="sort")
    gpo_sort.load_state_dict(gpo.state_dict())
    poolings = {"gpo": gpo, "gpo[sort]": gpo_sort, "max": MaxPool(), "mean": MeanPool()}
    probe = torch.randn(features.shape[0], features.shape[2])

    def train_step(pool: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            x = features.detach().requires_grad_()
            pooled, _ = pool(x, lengths)
            (pooled * probe).sum().backward()
            pool.zero_grad(set_to_none=True)

        return run

    for pool in poolings.values():
        pool.train()
    train = median_ms({name: train_step(pool) for name, pool in poolings.items()}, repeats, warmup)

    def infer(pool: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                pool(features, lengths)

        return run

    for pool in poolings.values():
        pool.eval()
    fns = {name: infer(pool) for name, pool in poolings.items()}

    def official() -> None:
        with torch.inference_mode():
            official_sort_pool(gpo, features, lengths)

    fns["gpo[official dim-1 sort]"] = official
    inference = median_ms(fns, repeats, warmup)
    with torch.inference_mode():  # sanity: all GPO paths agree
        ref = official_sort_pool(gpo, features, lengths)
        for pool in (gpo, gpo_sort):
            torch.testing.assert_close(pool(features, lengths)[0], ref, atol=1e-5, rtol=1e-5)
    return {"train_fwd_bwd_ms": train, "inference_ms": inference}


def bench_generator(lengths: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    """Weight generator only (forward + backward): per-sample loop vs once per distinct size."""
    torch.manual_seed(0)
    gpo = GPO().train()
    probe = torch.rand(lengths.shape[0], int(lengths.max()))

    def per_sample() -> None:
        rows = []
        for n in lengths.tolist():
            w = gpo.size_weights([n])[0]
            rows.append(torch.nn.functional.pad(w, (0, probe.shape[1] - n)))
        (torch.stack(rows) * probe).sum().backward()
        gpo.zero_grad(set_to_none=True)

    def distinct() -> None:
        (gpo.compute_weights(lengths) * probe).sum().backward()
        gpo.zero_grad(set_to_none=True)

    return median_ms({"per_sample": per_sample, "once_per_distinct_size": distinct}, repeats, warmup)


def environment(threads: int) -> dict[str, object]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": "cpu",
    }


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per candidate (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per candidate first")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/bench_gpo.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = load_average()
    results: dict[str, dict] = {}
    generator: dict[str, dict] = {}
    for name, (features, lengths) in make_workloads(args.batch, args.dim, args.seed).items():
        results[name] = bench_workload(features, lengths, args.repeats, args.warmup)
        generator[name] = bench_generator(lengths, max(3, args.repeats // 3), 2)  # per-sample is slow
        generator[name]["distinct_sizes"] = int(torch.unique(lengths).numel())

    rows = []
    print(f"{'workload':<14} {'mode':<10} {'candidate':<26} {'ms':>9} {'/max':>7}")
    for name, res in results.items():
        for mode, key in (("train", "train_fwd_bwd_ms"), ("inference", "inference_ms")):
            base = res[key]["max"]
            res[key.replace("_ms", "_ratio_to_max")] = {c: t / base for c, t in res[key].items()}
            for cand, ms in res[key].items():
                print(f"{name:<14} {mode:<10} {cand:<26} {ms:9.2f} {ms / base:7.2f}")
                rows.append((name, mode, cand, ms))
        print()
    print(f"{'workload':<14} {'generator fwd+bwd':<37} {'ms':>9}")
    for name, gen in generator.items():
        for cand in ("per_sample", "once_per_distinct_size"):
            print(f"{name:<14} {cand:<37} {gen[cand]:9.2f}")
        gen["speedup"] = gen["per_sample"] / gen["once_per_distinct_size"]
        print(f"{name:<14} {'speed-up (' + str(gen['distinct_sizes']) + ' distinct sizes)':<37} {gen['speedup']:8.1f}x")

    ratios = {name: res["inference_ratio_to_max"]["gpo"] for name, res in results.items()}
    met = all(r <= TARGET_RATIO for r in ratios.values())
    print(f"\ntarget: {TARGET}: {'met' if met else 'NOT met'} "
          f"({', '.join(f'{n} {r:.1f}x' for n, r in ratios.items())})")

    report = {
        "environment": environment(torch.get_num_threads()),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "config": {"batch": args.batch, "dim": args.dim, "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed},
        "workloads": results,
        "generator_fwd_bwd_ms": generator,
        "target": {"description": TARGET, "ratio": TARGET_RATIO, "gpo_inference_ratio": ratios, "met": met},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
