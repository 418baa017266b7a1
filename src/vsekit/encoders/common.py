"""Building blocks the encoders share: l2 normalisation, set compaction and masks, the VSE∞ size and
text augmentations (vectorised on padded tensors, any device), and the set-wise MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def l2norm(x: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """``x / (||x||_2 + eps)`` along ``dim`` (the official VSE∞ form: eps added to the norm)."""
    return x / (x.norm(dim=dim, keepdim=True) + eps)


def compact(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Move the kept entries of each row to the front, in their original order.

    Args:
        x: B×L or B×L×D padded tensor.
        keep: B×L boolean mask of the entries to keep (already false on padding).

    Returns:
        ``(compacted, lengths)``: same shape as ``x`` (dropped entries moved to the tail, where they
        are padding now) and the new B lengths.
    """
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    index = order if x.dim() == 2 else order[:, :, None].expand_as(x)
    return x.gather(1, index), keep.sum(dim=1)


def valid_mask(lengths: Tensor, max_len: int) -> Tensor:
    """B×max_len boolean mask, true at positions < length."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def drop_set_elements(features: Tensor, lengths: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """VSE∞ size augmentation: keep each valid element independently with probability ``1 - p``.

    A set that would lose every element keeps all of them. Returns the compacted features and lengths.
    """
    mask = valid_mask(lengths, features.shape[1])
    keep = mask & (torch.rand(mask.shape, device=features.device) >= p)
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, mask)
    return compact(features, keep)


def drop_grid_elements(features: Tensor, lengths: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """VSE∞ grid size augmentation: a per-sample drop rate.

    For each set, draw ``u ~ U(0, 1)``; when ``u > 0.2`` (80% of the sets) every valid element is dropped
    independently with probability ``p * u`` (so between ``0.2 p`` and ``p``), otherwise nothing is dropped.
    ``p = 0.2`` is the official schedule. A set never loses all its elements.
    """
    mask = valid_mask(lengths, features.shape[1])
    u = torch.rand(features.shape[0], 1, device=features.device)
    rate = torch.where(u > 0.2, p * u, torch.zeros_like(u))
    keep = mask & (torch.rand(mask.shape, device=features.device) >= rate)
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, mask)
    return compact(features, keep)


def augment_tokens(
    ids: Tensor, lengths: Tensor, p: float, vocab_size: int, mask_id: int
) -> tuple[Tensor, Tensor]:
    """VSE∞ text augmentation on padded token ids (B×T).

    Each token, ``<start>``/``<end>`` included as in the official code, is touched with probability
    ``p``; a touched token becomes ``mask_id`` (half of the cases), a uniformly random id (a tenth) or is
    deleted (the remaining 40%). A caption never loses all its tokens.
    """
    mask = valid_mask(lengths, ids.shape[1])
    u = torch.rand(ids.shape, device=ids.device)
    to_mask = mask & (u < 0.5 * p)
    to_random = mask & (u >= 0.5 * p) & (u < 0.6 * p)
    keep = mask & ((u < 0.6 * p) | (u >= p))
    random_ids = torch.randint(0, vocab_size, ids.shape, device=ids.device)
    ids = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    ids = torch.where(to_random, random_ids, ids)
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, mask)
    return compact(ids, keep)


class MLP(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Linear on every element of a set (the VSE∞ ``MLP``).

    BatchNorm statistics are computed over the valid elements only (the official code also counts the
    zero padding). A second BatchNorm exists only so that official checkpoints load key for key; like
    the original it is never applied.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim)])
        self.bns = nn.ModuleList([nn.BatchNorm1d(hidden), nn.BatchNorm1d(out_dim)])

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x``: B×L×in, ``mask``: B×L valid positions. Returns B×L×out (padding rows are zeros)."""
        rows = x[mask]  # N_valid × in
        h = torch.relu(self.bns[0](self.layers[0](rows)))
        out = self.layers[1](h)
        full = out.new_zeros(x.shape[0], x.shape[1], out.shape[-1])
        full[mask] = out
        return full
