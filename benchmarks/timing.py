"""The timing loop of the micro-benchmarks (``bench_eval``, ``bench_data``, ``bench_gpo``).

Candidates run in turn within each round, so a load change on a shared machine hits them alike instead of
skewing the ratios between them; report medians of the returned samples.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def interleaved_times(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times in seconds of each function over ``repeats`` rounds, after ``warmup`` untimed rounds.

    Args:
        fns: the candidates by name; each call is one timed run.
        repeats: timed rounds; each function runs once per round, in the dict's order.
        warmup: untimed rounds first (allocations, caches, lazy initialisation).

    Returns:
        ``{name: [seconds of round 1, ..., seconds of round repeats]}``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times
