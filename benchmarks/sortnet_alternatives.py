"""What else GPO's training-time sort could be on a CPU, measured against the sorting network vsekit uses.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/sortnet_alternatives.py [--repeats 7] [--compile]
        [--out benchmarks/results/sortnet_alternatives.json]

Workloads (batch 128, 1024 dimensions, one thread): ``image`` (36 regions, sizes 29..36 as after size
augmentation) and ``text`` (19 tokens, sizes 9..19). Each candidate computes the training form of
sort-and-weight, ``out[b, d] = sum_k w[b, k] * sort_desc(x[b, :len_b, d])[k]``, forward and backward (gradients of
``x`` and ``w``), timed as the median of interleaved rounds:

* ``network``: :func:`vsekit.pooling.pool_sorted`'s CPU path (Batcher network, swap records, exact backward);
* ``int64 keys``: each value's order-preserving integer bits in the high half of an int64 and its position in the
  low half, so the network needs only ``max``/``min`` (no swap records) and the backward is one scatter by the
  positions read from the sorted keys. Exact (same values, same gradients: checked), but it moves twice the bytes
  through integer ``max``/``min``, which AVX2 lacks for 64-bit lanes (AVX-512 has them);
* ``torch.sort``: a transposed copy sorted along its last dimension, autograd for the backward.

``--compile`` adds the network's forward (sorted values and swap records of the 36-element sets) through
``torch.compile`` (inductor's C++ backend), against the same Python function run eagerly: the compile time and
both forward times. The table gives each candidate's median and its ratio to ``network``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from timing import interleaved_times  # benchmarks/timing.py (benchmarks/ is on sys.path when run)
from vsekit.io import atomic_write_json
from vsekit.pooling import pool_sorted, sorting_network
from vsekit.pooling.sets import length_mask

REPO = Path(__file__).resolve().parents[1]
INT32_MIN = -(2**31)


def ordered_bits(bits: torch.Tensor) -> torch.Tensor:
    """Float32 bit patterns (as int32) to integers in the floats' order, and back (the map is its own inverse):
    a negative float's bits other than the sign are flipped."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def int64_key_pool(x: torch.Tensor, w: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort-and-weight on int64 keys; returns the pooled B×D values and the gradients of ``x`` and ``w`` for an
    upstream gradient of ones (the backward written out, as an autograd Function would)."""
    length = x.shape[1]
    key32 = ordered_bits(x.transpose(0, 1).contiguous().view(torch.int32))  # L×B×D
    pad = ~length_mask(lens, length, x.device).t().unsqueeze(-1)
    key32.masked_fill_(pad, INT32_MIN)  # below every float, -inf included
    keys = (key32.to(torch.int64) << 32) | torch.arange(length, dtype=torch.int64).view(length, 1, 1)
    ranks = list(keys.unbind(0))
    for i, j, _ in sorting_network(length):
        ranks[i], ranks[j] = torch.maximum(ranks[i], ranks[j]), torch.minimum(ranks[i], ranks[j])
    ordered = torch.stack(ranks)
    positions = ordered & 0xFF
    values = ordered_bits((ordered >> 32).to(torch.int32)).view(torch.float32).masked_fill(pad, 0)
    wt = w.t().unsqueeze(-1)  # L×B×1
    out = (values * wt).sum(0)
    grad = torch.ones_like(out)
    grad_x = torch.empty_like(values).scatter_(0, positions, (grad * wt).expand_as(values)).transpose(0, 1)
    grad_w = torch.einsum("lbd,bd->bl", values, grad)
    return out, grad_x, grad_w


def autograd_pool(x: torch.Tensor, w: torch.Tensor, lens: torch.Tensor, method: str) -> tuple[torch.Tensor, ...]:
    """:func:`pool_sorted` with ``method`` and its autograd backward for an upstream gradient of ones: the pooled
    values and the gradients of ``x`` and ``w``."""
    xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
    out = pool_sorted(xg, lens, wg, method=method)
    out.backward(torch.ones_like(out))
    return out.detach(), xg.grad, wg.grad


def network_pool(x: torch.Tensor, w: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return autograd_pool(x, w, lens, "network")


def sort_pool(x: torch.Tensor, w: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return autograd_pool(x, w, lens, "sort")


def same_result(reference: tuple[torch.Tensor, ...], other: tuple[torch.Tensor, ...]) -> bool:
    """The same gradient of ``x`` bit for bit (each position gets its rank's ``w_k``, the permutation's gradient);
    output and gradient of ``w`` to float rounding (their sums run in another order)."""
    return torch.equal(reference[1], other[1]) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(reference[0::2], other[0::2]))


def network_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's forward as one traceable function of the L×B×D slices: sorted values and swap records."""
    ranks, swaps = list(x.unbind(0)), []
    for i, j, _ in sorting_network(x.shape[0]):
        a, b = ranks[i], ranks[j]
        swaps.append(a < b)
        ranks[i], ranks[j] = torch.maximum(a, b), torch.minimum(a, b)
    return torch.stack(ranks), torch.stack(swaps)


def workload(batch: int, length: int, low: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(low, length + 1, (batch,), generator=g)
    lens[0] = length
    x = torch.randn(batch, length, dim, generator=g)
    w = torch.softmax(torch.randn(batch, length, generator=g), 1) * length_mask(lens, length, x.device)
    return x, w, lens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also the network's forward through torch.compile")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sortnet_alternatives.json")
    args = parser.parse_args(argv)
    candidates = {"network": network_pool, "int64 keys": int64_key_pool, "torch.sort": sort_pool}
    result: dict = {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "torch": torch.__version__, "python": platform.python_version(), "workloads": {}}  # fmt: skip
    print(f"sort-and-weight forward + backward, batch {args.batch}, dim {args.dim}, {torch.get_num_threads()} thread(s), "
          f"{result['cpu_capability']}; median of {args.repeats}")  # fmt: skip
    print(f"{'workload':<8} {'candidate':<12} {'ms':>9} {'vs network':>11} {'exact':>6}")
    for name, (length, low) in {"image": (36, 29), "text": (19, 9)}.items():
        x, w, lens = workload(args.batch, length, low, args.dim, seed=0)
        reference = network_pool(x, w, lens)
        exact = {c: same_result(reference, fn(x, w, lens)) for c, fn in candidates.items()}
        times = interleaved_times({c: (lambda fn=fn: fn(x, w, lens)) for c, fn in candidates.items()}, args.repeats, args.warmup)
        ms = {c: statistics.median(t) * 1e3 for c, t in times.items()}
        result["workloads"][name] = {"length": length, "sizes": [low, length], "median_ms": ms, "exact_gradients": exact,
                                     "ratio_to_network": {c: ms[c] / ms["network"] for c in ms}}  # fmt: skip
        for c in candidates:
            print(f"{name:<8} {c:<12} {ms[c]:>9.1f} {ms[c] / ms['network']:>10.2f}x {str(exact[c]):>6}")
    if args.compile:
        result["compile"] = compiled_forward(args)
    result["load_average"] = os.getloadavg()
    atomic_write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0


def compiled_forward(args: argparse.Namespace) -> dict:
    """The network's forward on the image workload, eager against ``torch.compile`` (time to compile included)."""
    x, _, _ = workload(args.batch, 36, 36, args.dim, seed=0)
    slices = x.transpose(0, 1).contiguous()
    start = time.perf_counter()
    compiled = torch.compile(network_forward, dynamic=False)
    values, _ = compiled(slices)
    seconds = time.perf_counter() - start
    assert torch.equal(values, network_forward(slices)[0])
    times = interleaved_times({"eager": lambda: network_forward(slices), "compiled": lambda: compiled(slices)}, args.repeats)
    ms = {c: statistics.median(t) * 1e3 for c, t in times.items()}
    print(f"network forward (values + swap records), image: eager {ms['eager']:.1f} ms, torch.compile {ms['compiled']:.1f} ms "
          f"({ms['compiled'] / ms['eager']:.2f}x), compiled in {seconds:.0f} s")  # fmt: skip
    return {"median_ms": ms, "compile_seconds": seconds}


if __name__ == "__main__":
    sys.exit(main())
