"""Building blocks the encoders share: l2 normalisation, set compaction and masks, the VSE∞ size and
text augmentations (vectorised on padded tensors, any device), and the set-wise MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError


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


def set_keep_mask(lengths: Tensor, max_len: int, p: float, mode: str = "region") -> Tensor:
    """The elements that VSE∞ size augmentation keeps, as a B×max_len boolean mask (no compaction).

    ``mode='region'``: every valid element is kept independently with probability ``1 - p``.
    ``mode='grid'``: a per-sample rate; draw ``u ~ U(0, 1)`` per set and, when ``u > 0.2`` (80% of
    the sets), drop every valid element with probability ``p * u`` (``p = 0.2`` is the official
    schedule). Either way a set never loses all its elements (it then keeps them all). The random
    draws are those of :func:`drop_set_elements` / :func:`drop_grid_elements`.
    """
    mask = valid_mask(lengths, max_len)
    if mode == "grid":
        u = torch.rand(lengths.shape[0], 1, device=lengths.device)
        rate = torch.where(u > 0.2, p * u, torch.zeros_like(u))
        keep = mask & (torch.rand(mask.shape, device=lengths.device) >= rate)
    else:
        keep = mask & (torch.rand(mask.shape, device=lengths.device) >= p)
    return torch.where(keep.any(dim=1, keepdim=True), keep, mask)


def drop_set_elements(features: Tensor, lengths: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """VSE∞ size augmentation: keep each valid element independently with probability ``1 - p``.

    A set that would lose every element keeps all of them. Returns the compacted features and lengths.
    """
    return compact(features, set_keep_mask(lengths.to(features.device), features.shape[1], p, "region"))


def drop_grid_elements(features: Tensor, lengths: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """VSE∞ grid size augmentation: a per-sample drop rate.

    For each set, draw ``u ~ U(0, 1)``; when ``u > 0.2`` (80% of the sets) every valid element is dropped
    independently with probability ``p * u`` (so between ``0.2 p`` and ``p``), otherwise nothing is dropped.
    ``p = 0.2`` is the official schedule. A set never loses all its elements.
    """
    return compact(features, set_keep_mask(lengths.to(features.device), features.shape[1], p, "grid"))


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
        if x.device.type != "cpu":  # boolean indexing would wait for the device
            return self.forward_masked(x, mask)
        out = self.forward_rows(x[mask])  # N_valid × in -> N_valid × out
        full = out.new_zeros(x.shape[0], x.shape[1], out.shape[-1])
        full[mask] = out
        return full

    def forward_rows(self, rows: Tensor, hidden: Tensor | None = None) -> Tensor:
        """The MLP on the N×in valid rows of a batch (BatchNorm statistics over these rows).

        Args:
            rows: N×in elements.
            hidden: the first layer's output for ``rows`` when already computed (fused with
                another product by the caller).
        """
        h = self.layers[0](rows) if hidden is None else hidden
        # a column slice of a fused product is strided; BatchNorm's CPU kernels are several times slower
        # on strided rows (65 ms against 9 for forward + backward of 3,659×512) than the copy costs
        return self.layers[1](torch.relu(self.bns[0](h.contiguous())))

    def forward_masked(self, x: Tensor, mask: Tensor, hidden: Tensor | None = None) -> Tensor:
        """:meth:`forward` without selecting rows (no host-device synchronisation): every row goes
        through the layers and the BatchNorm statistics are masked sums over the valid rows, so the
        valid rows get exactly what :meth:`forward` gives them. Padding rows are zeros."""
        h = self.layers[0](x) if hidden is None else hidden
        h = masked_batch_norm(h, mask, self.bns[0])
        out = self.layers[1](torch.relu(h))
        return out * mask.unsqueeze(-1).to(out.dtype)


def fc_and_mlp_first(x: Tensor, fc: nn.Linear, mlp: MLP | None) -> tuple[Tensor, Tensor | None]:
    """``fc(x)`` and, with a residual ``mlp`` beside it, that MLP's first layer on ``x`` too, as one matrix
    product (both read the same input; pass the second to :meth:`MLP.forward_rows` / ``forward_masked``)."""
    if mlp is None:
        return fc(x), None
    first = mlp.layers[0]
    both = F.linear(x, torch.cat([fc.weight, first.weight]), torch.cat([fc.bias, first.bias]))
    out, hidden = both.split([fc.out_features, first.out_features], dim=-1)
    return out, hidden


def masked_batch_norm(x: Tensor, mask: Tensor, bn: nn.BatchNorm1d) -> Tensor:
    """``bn`` applied to the rows of ``x`` (B×L×C) selected by ``mask`` (B×L), without selecting them.

    In training (batch statistics) the mean and biased variance are masked sums over the valid
    rows and ``bn``'s running statistics are updated as ``nn.BatchNorm1d`` does (unbiased variance,
    ``momentum``, ``num_batches_tracked``); in eval the running statistics are used. Values at
    padded rows are unspecified (finite). Nothing waits for the device.
    """
    if not (bn.training or bn.running_mean is None):
        return torch.nn.functional.batch_norm(
            x.reshape(-1, x.shape[-1]), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        ).view_as(x)
    wide = torch.promote_types(x.dtype, torch.float32)  # half inputs: statistics in float32
    weights = mask.unsqueeze(-1).to(wide)
    count = weights.sum()
    xf = x.to(wide)
    mean = (xf * weights).sum((0, 1)) / count
    centred = xf - mean
    var = (centred.square() * weights).sum((0, 1)) / count
    out = centred * torch.rsqrt(var + bn.eps)
    if bn.affine:
        out = out * bn.weight + bn.bias
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            unbiased = var * count / (count - 1).clamp(min=1)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
    return out.to(x.dtype)


def copy_word_vectors(weight: Tensor, word_vectors: Tensor | None) -> None:
    """Initialise a vocab_size×word_dim embedding ``weight`` from ``word_vectors`` (nothing when None).

    Raises:
        DataError: if the shapes differ.
    """
    if word_vectors is None:
        return
    if word_vectors.shape != weight.shape:
        raise DataError(f"word vectors: expected shape {tuple(weight.shape)}, got {tuple(word_vectors.shape)}")
    with torch.no_grad():
        weight.copy_(word_vectors)
