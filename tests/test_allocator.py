"""The training process keeps freed memory: a step-like churn of allocations stops faulting pages in again."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

from vsekit.training import allocator

CHURN = """
import random, resource, sys, torch
from vsekit.training.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
rng = random.Random(0)
sizes = [rng.randint(25_000, 8_000_000) for _ in range(40)]  # 0.1-32 MB of float32, like a step's tensors
for step in range(20):
    if step == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    live = []
    for size in sizes:
        live.append(torch.ones(size))
        if rng.random() < 0.5:
            live.pop(rng.randrange(len(live)))
    del live
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@glibc
def test_kept_memory_stops_the_page_faults_of_repeated_steps():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    assert default > 5_000  # glibc's defaults hand much of it back and fault it in again, step after step
    assert kept < default / 20


def test_no_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator.sys, "platform", "linux")

    def no_libc(*_args):
        raise OSError("no such library")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert allocator.keep_freed_memory() is False
