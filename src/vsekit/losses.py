"""Ranking losses for image-text embeddings.

The hinge triplet loss of VSE++ (Faghri et al., BMVC 2018), in both directions, summed over the batch:

* image i as the query:   cost_s[i, j]  = [margin + S[i, j] - S[i, i]]_+   for captions j != i
* caption j as the query: cost_im[i, j] = [margin + S[i, j] - S[j, j]]_+   for images i != j

``negatives='sum'`` (VSE0) adds every violation; ``negatives='hardest'`` (VSE++) keeps, per query, only the
hardest negative. Rows of ``sims`` are images and columns captions; the positive pairs are on the diagonal.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import ConfigError

NEGATIVES = ("hardest", "sum")


def negatives_mask(n: int, image_ids: Tensor | None = None, device: torch.device | None = None) -> Tensor:
    """Boolean n×n mask of the pairs that are NOT negatives: the diagonal, and with ``image_ids`` every
    pair of batch entries that show the same image (another caption of the same image is a positive)."""
    if image_ids is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    image_ids = image_ids.to(device) if device is not None else image_ids
    return image_ids[:, None] == image_ids[None, :]


def triplet_hinge_loss(
    sims: Tensor,
    margin: float = 0.2,
    negatives: str = "hardest",
    image_ids: Tensor | None = None,
    positives_mask: Tensor | None = None,
) -> Tensor:
    """Bidirectional hinge triplet loss on an in-batch similarity matrix.

    Args:
        sims: B×B similarities, rows images, columns captions; pair (i, i) is positive.
        margin: the hinge margin alpha.
        negatives: ``'hardest'`` (VSE++: max over negatives per query) or ``'sum'`` (VSE0: all negatives).
        image_ids: optional B image ids. When given, other captions of the same image in the batch are
            treated as positives and excluded from the negatives (off in the official code).
        positives_mask: optional precomputed B×B boolean mask of non-negatives (overrides ``image_ids``).

    Returns:
        The scalar loss, summed (not averaged) over the batch as in the official code.

    Example:
        >>> s = torch.tensor([[0.9, 0.8], [0.1, 0.5]])
        >>> # image queries: [.2+.8-.9]+ = .1, [.2+.1-.5]+ = 0; caption queries: [.2+.8-.5]+ = .5, [.2+.1-.9]+ = 0
        >>> round(float(triplet_hinge_loss(s, margin=0.2, negatives="sum")), 4)
        0.6
    """
    if negatives not in NEGATIVES:
        raise ConfigError(f"negatives: expected one of {', '.join(NEGATIVES)}, got {negatives!r}")
    if sims.dim() != 2 or sims.shape[0] != sims.shape[1]:
        raise ValueError(f"sims: expected a square B×B matrix, got shape {tuple(sims.shape)}")
    n = sims.shape[0]
    mask = positives_mask if positives_mask is not None else negatives_mask(n, image_ids, sims.device)
    diagonal = sims.diagonal()
    cost_s = (margin + sims - diagonal[:, None]).clamp(min=0).masked_fill(mask, 0)  # image queries (rows)
    cost_im = (margin + sims - diagonal[None, :]).clamp(min=0).masked_fill(mask, 0)  # caption queries (columns)
    if negatives == "hardest":
        return cost_s.amax(dim=1).sum() + cost_im.amax(dim=0).sum()
    return cost_s.sum() + cost_im.sum()


class ContrastiveLoss(nn.Module):
    """Module form of :func:`triplet_hinge_loss` with the VSE∞ warm-up.

    During the first ``warmup_epochs`` epochs the loss sums over all negatives, then it switches to
    ``negatives`` (VSE∞ trains with one epoch of ``'sum'`` before ``'hardest'``). Call
    :meth:`set_epoch` at the start of each epoch.

    Args:
        margin: hinge margin.
        negatives: ``'hardest'`` or ``'sum'`` after the warm-up.
        warmup_epochs: number of initial epochs that use ``'sum'``.
        same_image_positives: exclude other captions of the same image from the negatives (needs
            ``image_ids`` in :meth:`forward`).
    """

    def __init__(
        self, margin: float = 0.2, negatives: str = "hardest", warmup_epochs: int = 0, same_image_positives: bool = False
    ) -> None:
        super().__init__()
        if negatives not in NEGATIVES:
            raise ConfigError(f"loss.negatives: expected one of {', '.join(NEGATIVES)}, got {negatives!r}")
        self.margin = margin
        self.negatives = negatives
        self.warmup_epochs = warmup_epochs
        self.same_image_positives = same_image_positives
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the negatives for ``epoch`` (0-based)."""
        self.epoch = epoch

    @property
    def current_negatives(self) -> str:
        """The negatives in use at the current epoch."""
        return "sum" if self.epoch < self.warmup_epochs else self.negatives

    def forward(self, sims: Tensor, image_ids: Tensor | None = None) -> Tensor:
        if self.same_image_positives and image_ids is None:
            raise ValueError("same_image_positives needs the batch's image_ids")
        return triplet_hinge_loss(
            sims, self.margin, self.current_negatives, image_ids if self.same_image_positives else None
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, negatives={self.negatives!r}, warmup_epochs={self.warmup_epochs}, "
            f"same_image_positives={self.same_image_positives}"
        )


def instance_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Dual-Path instance loss: cross-entropy of the shared classifier's logits against the image
    identity (every training image is its own class; its captions share the class). Mean over the batch."""
    return nn.functional.cross_entropy(logits.float(), labels)
