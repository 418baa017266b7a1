"""Ranking losses for image-text embeddings: the hinge triplet loss (VSE0 / VSE++) and InfoNCE.

The hinge triplet loss of VSE++ (Faghri et al., BMVC 2018), in both directions, summed over the batch:

* image i as the query:   cost_s[i, j]  = [margin + S[i, j] - S[i, i]]_+   for captions j != i
* caption j as the query: cost_im[i, j] = [margin + S[i, j] - S[j, j]]_+   for images i != j

``negatives='sum'`` (VSE0) adds every violation; ``negatives='hardest'`` (VSE++) keeps, per query, only the
hardest negative. Rows of ``sims`` are images and columns captions; the positive pairs are on the diagonal.

``negatives='softmax'`` is not a hinge: it is the InfoNCE / CLIP loss, a cross-entropy per query over its
positive and every in-batch negative at a temperature ``tau``::

    loss = mean_i -log softmax_j(S[i, :] / tau)[i]  +  mean_j -log softmax_i(S[:, j] / tau)[j]

It weighs each negative by how close it is (between 'sum' and 'hardest') and needs no margin. It is not in
the three papers; it is here because on small, repetitive caption sets (RSICD) it learns markedly better
than either hinge (see docs/results/rsicd.md).

Both directions are :func:`query_hinge` / :func:`query_softmax` (one query per row against candidate columns).
:func:`sharded_triplet_hinge_loss` is one process's share of the loss of a global batch in data-parallel
training: its own queries against every candidate of the global batch (see :mod:`vsekit.training.distributed`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..config import NEGATIVES, LossConfig
from ..errors import ConfigError


def caption_text_ids(captions: Sequence[str]) -> Tensor:
    """One int64 id per caption, equal for captions with the same text (compared lowercased, with runs of
    whitespace and a final full stop ignored): the ``text_ids`` of :func:`negatives_mask`."""
    ids: dict[str, int] = {}
    out = [ids.setdefault(" ".join(c.lower().split()).rstrip(" ."), len(ids)) for c in captions]
    return torch.tensor(out, dtype=torch.int64)


def negatives_mask(
    n: int, image_ids: Tensor | None = None, device: torch.device | None = None, text_ids: Tensor | None = None
) -> Tensor:
    """Boolean n×n mask of the pairs that are NOT negatives: the diagonal; with ``image_ids`` every pair of
    batch entries that show the same image (another caption of the same image is a positive); with
    ``text_ids`` (:func:`caption_text_ids`) every pair whose captions read the same (a caption identical to an
    image's own describes it, and an image described by the same sentence matches the caption)."""
    return _or_id_matches(torch.eye(n, dtype=torch.bool, device=device), ((image_ids, image_ids), (text_ids, text_ids)))


def _or_id_matches(mask: Tensor, id_pairs: Iterable[tuple[Tensor | None, Tensor | None]]) -> Tensor:
    """``mask`` (rows × columns, changed in place and returned) with every (row, column) whose ids are equal
    set, for each pair of (row ids, column ids) whose row ids are given: one home for the "same image" and
    "same sentence" rule of the full batch mask and of a process's slice of it."""
    for row_ids, col_ids in id_pairs:
        if row_ids is not None:
            mask |= row_ids.to(mask.device)[:, None] == col_ids.to(mask.device)[None, :]
    return mask


def query_hinge(scores: Tensor, positive: Tensor, not_negative: Tensor, margin: float, negatives: str) -> Tensor:
    """One direction of the hinge loss: every row is a query scored against candidate columns.

    Args:
        scores: Q×C similarities of the queries (rows) with the candidates (columns).
        positive: Q int64 column of each query's positive.
        not_negative: Q×C boolean mask of the candidates that are not negatives of the query (its
            positive, and other positives).
        margin: the hinge margin.
        negatives: ``'hardest'`` (max violation per query) or ``'sum'``.

    Returns:
        ``sum_q max_c`` (hardest) or ``sum_q sum_c`` (sum) of ``[margin + scores[q, c] - scores[q, positive[q]]]_+``
        over the negatives ``c``.
    """
    pos = scores.gather(1, positive[:, None])
    cost = (margin + scores - pos).clamp(min=0).masked_fill(not_negative, 0)
    return cost.amax(dim=1).sum() if negatives == "hardest" else cost.sum()


def query_softmax(scores: Tensor, positive: Tensor, not_negative: Tensor, temperature: float) -> Tensor:
    """One direction of the InfoNCE loss: every row is a query scored against candidate columns.

    Args:
        scores: Q×C similarities of the queries (rows) with the candidates (columns).
        positive: Q int64 column of each query's positive.
        not_negative: Q×C boolean mask of the candidates that are not negatives (the positive itself, and
            other positives, which are left out of the softmax).
        temperature: the softmax temperature ``tau`` (> 0).

    Returns:
        ``sum_q -log( exp(s[q, p_q] / tau) / sum_{c in {p_q} + negatives(q)} exp(s[q, c] / tau) )``.
    """
    logits = scores / temperature
    rows = torch.arange(scores.shape[0], device=scores.device)
    others = not_negative.clone()
    others[rows, positive] = False  # the positive stays in the softmax, other positives leave it
    logits = logits.masked_fill(others, float("-inf"))
    return nn.functional.cross_entropy(logits, positive, reduction="sum")


def _direction(
    scores: Tensor, positive: Tensor, not_negative: Tensor, margin: float, negatives: str, temperature: float
) -> Tensor:
    """One direction of the ranking loss, summed over its queries (hinge or softmax by ``negatives``)."""
    if negatives == "softmax":
        return query_softmax(scores, positive, not_negative, temperature)
    return query_hinge(scores, positive, not_negative, margin, negatives)


def triplet_hinge_loss(
    sims: Tensor,
    margin: float = 0.2,
    negatives: str = "hardest",
    image_ids: Tensor | None = None,
    positives_mask: Tensor | None = None,
    temperature: float = 0.05,
    text_ids: Tensor | None = None,
) -> Tensor:
    """Bidirectional hinge triplet loss on an in-batch similarity matrix (or, with ``negatives='softmax'``,
    the InfoNCE loss).

    Args:
        sims: B×B similarities, rows images, columns captions; pair (i, i) is positive.
        margin: the hinge margin alpha.
        negatives: ``'hardest'`` (VSE++: max over negatives per query), ``'sum'`` (VSE0: all negatives) or
            ``'softmax'`` (InfoNCE; ``margin`` is not used).
        image_ids: optional B image ids. When given, other captions of the same image in the batch are
            treated as positives and excluded from the negatives (off in the official code).
        positives_mask: optional precomputed B×B boolean mask of non-negatives (overrides ``image_ids`` and
            ``text_ids``).
        temperature: the softmax temperature (``'softmax'`` only).
        text_ids: optional B caption text ids (:func:`caption_text_ids`). When given, pairs whose captions
            read the same are not negatives of each other either.

    Returns:
        The scalar loss: hinges are summed (not averaged) over the batch as in the official code; the
        softmax loss is the mean over the batch of each direction's cross-entropy, the two directions added.

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
    mask = positives_mask if positives_mask is not None else negatives_mask(n, image_ids, sims.device, text_ids)
    diagonal = torch.arange(n, device=sims.device)
    # image queries are the rows, caption queries the columns
    loss = _direction(sims, diagonal, mask, margin, negatives, temperature) + _direction(
        sims.t(), diagonal, mask.t(), margin, negatives, temperature
    )
    return loss / n if negatives == "softmax" else loss


class ContrastiveLoss(nn.Module):
    """Module form of :func:`triplet_hinge_loss` with the VSE∞ warm-up.

    During the first ``warmup_epochs`` epochs the loss sums over all negatives, then it switches to
    ``negatives`` (VSE∞ trains with one epoch of ``'sum'`` before ``'hardest'``). Call
    :meth:`set_epoch` at the start of each epoch.

    Args:
        margin: hinge margin.
        negatives: ``'hardest'``, ``'sum'`` or ``'softmax'`` (InfoNCE) after the warm-up.
        warmup_epochs: number of initial epochs that use ``'sum'``.
        same_image_positives: exclude other captions of the same image from the negatives (needs
            ``image_ids`` in :meth:`forward`).
        temperature: softmax temperature of ``negatives='softmax'``.
        same_text_positives: exclude captions that read the same as a pair's caption from its image's
            negatives, and the images they belong to from its caption's (needs ``text_ids``).
    """

    def __init__(
        self,
        margin: float = 0.2,
        negatives: str = "hardest",
        warmup_epochs: int = 0,
        same_image_positives: bool = False,
        temperature: float = 0.05,
        same_text_positives: bool = False,
    ) -> None:
        super().__init__()
        if negatives not in NEGATIVES:
            raise ConfigError(f"loss.negatives: expected one of {', '.join(NEGATIVES)}, got {negatives!r}")
        if not temperature > 0:
            raise ConfigError(f"loss.temperature: expected a positive number, got {temperature}")
        self.temperature = temperature
        self.margin = margin
        self.negatives = negatives
        self.warmup_epochs = warmup_epochs
        self.same_image_positives = same_image_positives
        self.same_text_positives = same_text_positives
        self.epoch = 0

    @classmethod
    def from_config(cls, cfg: LossConfig) -> ContrastiveLoss:
        """The ranking loss of a training config's ``loss`` section."""
        return cls(
            cfg.margin, cfg.negatives, cfg.warmup_epochs, cfg.same_image_positives, cfg.temperature, cfg.same_text_positives
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the negatives for ``epoch`` (0-based)."""
        self.epoch = epoch

    @property
    def current_negatives(self) -> str:
        """The negatives in use at the current epoch."""
        return "sum" if self.epoch < self.warmup_epochs else self.negatives

    def forward(self, sims: Tensor, image_ids: Tensor | None = None, text_ids: Tensor | None = None) -> Tensor:
        if self.same_image_positives and image_ids is None:
            raise ValueError("same_image_positives needs the batch's image_ids")
        if self.same_text_positives and text_ids is None:
            raise ValueError("same_text_positives needs the batch's text_ids")
        return triplet_hinge_loss(
            sims,
            self.margin,
            self.current_negatives,
            image_ids if self.same_image_positives else None,
            temperature=self.temperature,
            text_ids=text_ids if self.same_text_positives else None,
        )

    def forward_shard(
        self,
        image_sims: Tensor,
        caption_sims: Tensor,
        offset: int,
        image_ids: Tensor | None = None,
        all_image_ids: Tensor | None = None,
        text_ids: Tensor | None = None,
        all_text_ids: Tensor | None = None,
    ) -> Tensor:
        """This process's share of the global-batch loss (:func:`sharded_triplet_hinge_loss`)."""
        if self.same_image_positives and (image_ids is None or all_image_ids is None):
            raise ValueError("same_image_positives needs the batch's image_ids and those of the global batch")
        if self.same_text_positives and (text_ids is None or all_text_ids is None):
            raise ValueError("same_text_positives needs the batch's text_ids and those of the global batch")
        use, use_text = self.same_image_positives, self.same_text_positives
        return sharded_triplet_hinge_loss(
            image_sims, caption_sims, offset, self.margin, self.current_negatives,
            image_ids if use else None, all_image_ids if use else None, self.temperature,
            text_ids if use_text else None, all_text_ids if use_text else None,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, negatives={self.negatives!r}, warmup_epochs={self.warmup_epochs}, "
            f"same_image_positives={self.same_image_positives}, temperature={self.temperature}, "
            f"same_text_positives={self.same_text_positives}"
        )


def sharded_triplet_hinge_loss(
    image_sims: Tensor,
    caption_sims: Tensor,
    offset: int,
    margin: float = 0.2,
    negatives: str = "hardest",
    image_ids: Tensor | None = None,
    all_image_ids: Tensor | None = None,
    temperature: float = 0.05,
    text_ids: Tensor | None = None,
    all_text_ids: Tensor | None = None,
) -> Tensor:
    """One process's share of :func:`triplet_hinge_loss` over a global batch of B pairs.

    The process holds pairs ``offset .. offset + b - 1`` of the global batch. Summed over the processes,
    the shares equal :func:`triplet_hinge_loss` of the B×B matrix (hardest negatives are mined over all B
    candidates), while each process only scores its own b queries.

    Args:
        image_sims: b×B similarities of the local images (queries) with all B captions.
        caption_sims: B×b similarities of all B images with the local captions (queries, columns).
        offset: position of the local pairs in the global batch.
        margin: the hinge margin.
        negatives: ``'hardest'``, ``'sum'`` or ``'softmax'``.
        image_ids: optional b image ids of the local pairs; with ``all_image_ids`` (the B ids of the
            global batch), other captions of the same image are positives, not negatives.
        all_image_ids: the B image ids of the global batch (needed with ``image_ids``).
        temperature: the softmax temperature (``'softmax'`` only).
        text_ids, all_text_ids: optional caption text ids of the local pairs and of the global batch
            (:func:`caption_text_ids`): pairs whose captions read the same are not negatives either.

    Returns:
        The scalar share (for ``'softmax'`` its queries' cross-entropies divided by B, the global batch).
    """
    if negatives not in NEGATIVES:
        raise ConfigError(f"negatives: expected one of {', '.join(NEGATIVES)}, got {negatives!r}")
    b, total = image_sims.shape
    if caption_sims.shape != (total, b):
        raise ValueError(f"caption_sims: expected shape {(total, b)}, got {tuple(caption_sims.shape)}")
    local = torch.arange(b, device=image_sims.device)
    positive = local + offset
    not_negative = torch.zeros(b, total, dtype=torch.bool, device=image_sims.device)
    not_negative[local, positive] = True
    for name, ids, all_ids in (("image_ids", image_ids, all_image_ids), ("text_ids", text_ids, all_text_ids)):
        if ids is not None and all_ids is None:
            raise ValueError(f"sharded_triplet_hinge_loss: {name} needs all_{name}")
    _or_id_matches(not_negative, ((image_ids, all_image_ids), (text_ids, all_text_ids)))
    loss = _direction(image_sims, positive, not_negative, margin, negatives, temperature) + _direction(
        caption_sims.t(), positive, not_negative, margin, negatives, temperature
    )
    return loss / total if negatives == "softmax" else loss
