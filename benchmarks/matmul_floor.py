"""The matrix-product floor of a function: the time its matrix products alone take, measured on this machine.

:func:`record_matmuls` runs the function once under a ``TorchDispatchMode`` that records every matrix product it
calls (``mm``, ``addmm``, ``bmm``, ``baddbmm``: what ``nn.Linear``, ``matmul`` and the GRU step loop reach), with
its operands' shapes, strides and dtype. :func:`time_matmuls` then runs each distinct product alone on fresh
operands of the same layout and adds up the medians, times how often the function called it. That sum is the floor
of the function on this CPU: what it would take if everything but its matrix products were free. ``FLOPs / floor``
is the matrix throughput the products reach at their own shapes (not a peak figure from a square benchmark).

Used by ``bench_train_step.py --floor``; it runs in the benchmark's worker, beside the code it measures.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
MATMULS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
"""The products recorded, by overload packet: ``torch.addmm(..., out=buffer)`` dispatches ``aten.addmm.out``."""

Layout = tuple[tuple[int, ...], tuple[int, ...], str]
Call = tuple[str, tuple[Layout, ...]]


def _layout(t: torch.Tensor) -> Layout:
    return tuple(t.shape), tuple(t.stride()), str(t.dtype).removeprefix("torch.")


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[Call] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func.overloadpacket in MATMULS:
            self.calls[(func.overloadpacket.__name__, tuple(_layout(a) for a in args if isinstance(a, torch.Tensor)))] += 1
        return func(*args, **(kwargs or {}))


def record_matmuls(fn: Callable[[], Any]) -> Counter[Call]:
    """The matrix products one call of ``fn`` makes: ``{(op, operand layouts): count}``."""
    recorder = _Recorder()
    with recorder:
        fn()
    return recorder.calls


def flops(call: Call) -> int:
    """Multiply-adds × 2 of one product (the addition of ``addmm``'s bias is not counted)."""
    name, layouts = call
    a, b = layouts[-2][0], layouts[-1][0]  # the two multiplied operands come last
    if name in ("mm", "addmm"):
        return 2 * a[0] * a[1] * b[1]
    return 2 * a[0] * a[1] * a[2] * b[2]  # bmm, baddbmm: batch × m × k × n


def _operand(layout: Layout, device: str) -> torch.Tensor:
    shape, stride, dtype = layout
    size = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
    base = torch.randn(max(size, 1), dtype=getattr(torch, dtype), device=device)
    return base.as_strided(shape, stride)


def time_matmuls(calls: Counter[Call], device: str = "cpu", repeats: int = 5) -> dict[str, float]:
    """Seconds, FLOPs and throughput of the recorded products run alone (medians of ``repeats`` runs each)."""
    op = {"mm": torch.mm, "addmm": torch.addmm, "bmm": torch.bmm, "baddbmm": torch.baddbmm}
    seconds = 0.0
    for call, count in calls.items():
        name, layouts = call
        operands = [_operand(layout, device) for layout in layouts]
        op[name](*operands)  # warm-up
        runs = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            op[name](*operands)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - start)
        seconds += count * statistics.median(runs)
    total = sum(count * flops(call) for call, count in calls.items())
    return {"seconds": seconds, "gflop": total / 1e9, "gflop_per_second": total / 1e9 / max(seconds, 1e-12),
            "products": sum(calls.values()), "distinct": len(calls)}  # fmt: skip
