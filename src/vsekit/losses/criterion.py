"""The criterion: named, weighted loss terms over one batch (the trainer calls it and nothing else).

A term reads what it needs from :class:`BatchOutputs` (embeddings, similarities, logits, ids) and returns a
scalar; :class:`Criterion` adds the terms with their weights from :class:`vsekit.config.LossConfig`, so a new
loss is a new term, not a change to the training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from ..config import LossConfig
from ..errors import ConfigError
from .instance import instance_loss
from .ranking import ContrastiveLoss

@dataclass(frozen=True)
class ShardView:
    """This process's slice of a data-parallel global batch, as the loss terms see it.

    Attributes:
        offset: position of the slice in the global batch.
        total: size of the global batch (per-sample means are over it).
        gather: all processes' rows of a tensor, in rank order, with gradients flowing back to each process.
        gather_ids: the same without gradients (ids).
    """

    offset: int
    total: int
    gather: Callable[[Tensor], Tensor]
    gather_ids: Callable[[Tensor], Tensor]


@dataclass
class BatchOutputs:
    """What the model gave for one training batch: what every loss term reads.

    Attributes:
        images: B×E image embeddings (float32).
        captions: B×E caption embeddings (pair ``i`` is ``images[i]``, ``captions[i]``).
        image_ids: B image ids (captions of one image are positives of each other's image).
        similarity: the model's similarity (images × texts).
        image_logits: B×C instance logits of the images, when an instance term needs them.
        caption_logits: B×C instance logits of the captions, likewise.
        text_ids: B ids of the caption texts (``loss.same_text_positives``), or None.
        shard: in data-parallel training, this process's slice of the global batch.
    """

    images: Tensor
    captions: Tensor
    image_ids: Tensor
    similarity: Callable[[Tensor, Tensor], Tensor]
    image_logits: Tensor | None = None
    caption_logits: Tensor | None = None
    text_ids: Tensor | None = None
    shard: ShardView | None = None


class RankingTerm:
    """The ranking loss of a batch (:class:`ContrastiveLoss`): over the whole batch, or in data-parallel
    training this process's share of the global batch's loss (its queries ranked against every process's
    candidates)."""

    def __init__(self, loss: ContrastiveLoss) -> None:
        self.loss = loss

    def __call__(self, out: BatchOutputs) -> Tensor:
        if self.loss.same_text_positives and out.text_ids is None:
            raise ValueError("loss.same_text_positives needs the text ids of the training captions")
        tids = out.text_ids if self.loss.same_text_positives else None
        if out.shard is None:
            return self.loss(out.similarity(out.images, out.captions), out.image_ids, tids)
        shard = out.shard
        all_img, all_cap = shard.gather(out.images), shard.gather(out.captions)
        all_ids = shard.gather_ids(out.image_ids) if self.loss.same_image_positives else None
        all_tids = shard.gather_ids(tids) if tids is not None else None
        return self.loss.forward_shard(
            out.similarity(out.images, all_cap), out.similarity(all_img, out.captions), shard.offset, out.image_ids,
            all_ids, tids, all_tids,
        )  # fmt: skip


class InstanceTerm:
    """Dual-Path's instance loss (:func:`instance_loss`) of one branch's logits (``"image"`` or ``"caption"``)."""

    def __init__(self, branch: str) -> None:
        if branch not in ("image", "caption"):
            raise ValueError(f"branch: expected 'image' or 'caption', got {branch!r}")
        self.branch = branch

    def __call__(self, out: BatchOutputs) -> Tensor:
        logits = out.image_logits if self.branch == "image" else out.caption_logits
        if logits is None:
            raise ValueError(f"the instance loss of the {self.branch}s needs their logits (model.instance_classes > 0)")
        return instance_loss(logits, out.image_ids, None if out.shard is None else out.shard.total)


class Criterion:
    """The training loss: a weighted sum of named terms, each a callable of :class:`BatchOutputs`.

    >>> crit = Criterion.from_config(LossConfig(ranking_weight=2.0, instance_image_weight=1.0))
    >>> crit.names
    ['ranking', 'instance_image']
    """

    def __init__(self, terms: Sequence[tuple[str, float, Callable[[BatchOutputs], Tensor]]]) -> None:
        if not terms:
            raise ConfigError("loss: at least one term needs a weight > 0")
        self.terms = list(terms)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.terms]

    @classmethod
    def from_config(cls, cfg: LossConfig, ranking: ContrastiveLoss | None = None) -> Criterion:
        """The terms of ``cfg`` whose weight is positive: ``ranking`` (``ranking_weight``; the given
        :class:`ContrastiveLoss`, which holds the warm-up state, or a new one), ``instance_image`` and
        ``instance_text`` (Dual-Path)."""
        terms: list[tuple[str, float, Callable[[BatchOutputs], Tensor]]] = []
        if cfg.ranking_weight > 0:
            terms.append(("ranking", cfg.ranking_weight, RankingTerm(ranking or ContrastiveLoss.from_config(cfg))))
        if cfg.instance_image_weight > 0:
            terms.append(("instance_image", cfg.instance_image_weight, InstanceTerm("image")))
        if cfg.instance_text_weight > 0:
            terms.append(("instance_text", cfg.instance_text_weight, InstanceTerm("caption")))
        return cls(terms)

    def __call__(self, out: BatchOutputs) -> Tensor:
        loss = out.images.new_zeros(())
        for _, weight, term in self.terms:
            loss = loss + weight * term(out)
        return loss
