"""Keep the memory a training step frees inside the process, so that the next step does not fault it in again.

A training step on a CPU allocates and frees the same few hundred megabytes every step (activations, gradients,
the sorting network's swap records). With glibc's default settings much of that goes back to the kernel when it
is freed (the top of the heap is trimmed; blocks above a moving threshold are ``mmap``-ed), and the next step
takes a page fault and a zeroed page for every 4 KB of it again: 10,000-34,000 faults per step of the VSE∞
region model at batch 128, about 4% of its time. :func:`keep_freed_memory` raises glibc's trim threshold and
fixes its ``mmap`` threshold at the maximum, so that the heap keeps what it has grown to and the faults stop.

The process keeps its peak heap until it exits (the training process reaches that peak anyway). Linux with glibc
only; elsewhere nothing changes. :func:`vsekit.training.train` calls it once per run.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameters (``<malloc.h>``)."""

SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}
"""Blocks up to 32 MB (glibc's largest allowed threshold) come from the heap; up to 1 GB of free heap top is kept;
the heap grows 64 MB at a time."""


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` to this process's glibc allocator; ``True`` if glibc accepted all of them,
    ``False`` where there is no ``mallopt`` or it refuses them (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:  # the process's own symbols (libc's among them); find_library would run ldconfig in a subprocess
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
