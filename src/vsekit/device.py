"""Where models run: device choice and the autocast context of mixed precision.

The bottom of the package with :mod:`vsekit.errors`, :mod:`vsekit.io` and :mod:`vsekit.progress`: loading a
model, extracting features, indexing and training all pick their device here.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``'auto'`` -> CUDA when available, else Apple MPS when available, else CPU."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available")
    return device


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``'bf16'``/``'fp16'``; a null context for ``'fp32'``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
