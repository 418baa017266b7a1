"""What every pooling shares: validating a padded batch of sets and its sizes, the validity mask, padding
fills, and the accumulation dtype of half-precision inputs."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from vsekit.errors import DataError

Lengths = Tensor | Sequence[int]
"""Set sizes: an integer tensor on any device, or a sequence of ints."""


def check_lengths(features: Tensor, lengths: Lengths) -> Tensor:
    """Validate a padded batch and its set sizes.

    Args:
        features: B×L×D floating-point tensor, the valid elements of each set at the front.
        lengths: the B set sizes, as an integer tensor on any device (integral floats, as in the
            official code, are accepted) or a sequence of ints.

    Returns:
        The sizes as an int64 CPU tensor of shape (B,).

    Raises:
        DataError: if ``features`` is not a floating B×L×D tensor, or ``lengths`` is not 1-D with
            one size per set, not integral, or outside ``1..L``.
    """
    if not isinstance(features, Tensor) or features.dim() != 3 or not features.is_floating_point():
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise DataError(f"features must be a floating-point B×L×D tensor, got {shape}")
    batch, max_len, _ = features.shape
    if batch == 0 or max_len == 0:
        raise DataError(f"features must hold at least one set and one position, got {tuple(features.shape)}")
    if isinstance(lengths, Tensor):
        lens = lengths.detach().to("cpu")
    else:
        try:
            lens = torch.as_tensor(list(lengths))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"lengths must be a 1-D sequence of ints, got {lengths!r}") from exc
    if lens.dim() != 1 or lens.numel() != batch:
        raise DataError(f"lengths must have shape ({batch},) to match features, got {tuple(lens.shape)}")
    if lens.dtype == torch.bool or lens.is_complex():
        raise DataError(f"lengths must be integers, got dtype {lens.dtype}")
    if lens.is_floating_point():
        if not bool(torch.equal(lens, lens.round())):
            raise DataError("lengths must be whole numbers")
    lens = lens.to(torch.int64)
    if int(lens.min()) < 1 or int(lens.max()) > max_len:
        raise DataError(
            f"lengths must lie in 1..{max_len} (the padded set size), got min {int(lens.min())}, "
            f"max {int(lens.max())}"
        )
    return lens


def length_mask(lengths: Tensor, max_len: int, device: torch.device | None = None) -> Tensor:
    """Boolean B×``max_len`` mask that is True at the first ``lengths[b]`` positions of row ``b``."""
    lengths = lengths.to(device, non_blocking=True) if device is not None else lengths  # host lengths: no wait
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(1)


def on_accelerator(features: Tensor, lengths: Lengths) -> bool:
    """Whether ``lengths`` already lie on the (non-CPU) device of ``features``: pool without reading them back."""
    return isinstance(lengths, Tensor) and lengths.device.type != "cpu" and features.device == lengths.device


def check_lengths_on_device(features: Tensor, lengths: Tensor) -> Tensor:
    """:func:`check_lengths` for sizes on an accelerator: shapes checked now, the range by an asynchronous
    device assert (a host read would make the host wait for the device). Returns int64 sizes there."""
    if features.dim() != 3 or not features.is_floating_point() or lengths.shape != features.shape[:1]:
        raise DataError(
            f"features must be a floating-point B×L×D tensor and lengths (B,), got {tuple(features.shape)} "
            f"and {tuple(lengths.shape)}"
        )
    lens = lengths.to(torch.int64)
    torch._assert_async(((lens >= 1) & (lens <= features.shape[1])).all(), "lengths must lie in 1..L (the padded size)")
    return lens


def prepare_sets(features: Tensor, lengths: Lengths) -> tuple[Tensor, Tensor]:
    """Validated lengths and the B×L validity mask on the features' device. The lengths come back as an int64
    CPU tensor, or, when they already lie on the features' accelerator, there (never read by the host)."""
    on_device = on_accelerator(features, lengths)
    lens = check_lengths_on_device(features, lengths) if on_device else check_lengths(features, lengths)
    return lens, length_mask(lens, features.shape[1], features.device)


def fill_padding(x: Tensor, valid: Tensor, value: float) -> Tensor:
    """Copy of ``x`` (B×L×D) with the padded rows set to ``value``, whatever they held.

    ``index_fill`` on the B·L rows is used because it is exact for any padding (inf, NaN) and,
    on CPU, several times faster than ``masked_fill``/``torch.where`` with a broadcast mask.
    """
    pad = (~valid).flatten().nonzero().squeeze(1)
    if pad.numel() == 0:
        return x
    batch, length, dim = x.shape
    return x.reshape(batch * length, dim).index_fill(0, pad, value).view(batch, length, dim)


def masked_amax(x: Tensor, valid: Tensor) -> Tensor:
    """Per-dimension maximum over the valid positions of each set (B×L×D -> B×D)."""
    return fill_padding(x, valid, float("-inf")).amax(1)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of a pooling: float32 for half-precision inputs, else ``dtype``."""
    return torch.promote_types(dtype, torch.float32)
