"""Dual-Path's instance loss: each training image with its captions is one class of a classifier that both
branches share."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def instance_loss(logits: Tensor, labels: Tensor, total: int | None = None) -> Tensor:
    """Dual-Path instance loss: cross-entropy of the shared classifier's logits against the image
    identity (every training image is its own class; its captions share the class). Mean over the batch.

    With ``total`` (data-parallel training), the sum over these samples divided by ``total``, the size of
    the global batch: this process's share of the mean over the global batch.
    """
    logits = logits if logits.dtype == torch.float64 else logits.float()
    if total is None:
        return nn.functional.cross_entropy(logits, labels)
    return nn.functional.cross_entropy(logits, labels, reduction="sum") / total
