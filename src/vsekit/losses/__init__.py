"""Losses for image-text embeddings, composable as named, weighted terms.

* :mod:`.ranking`: the hinge triplet loss over the hardest negative (VSE++) or all of them (VSE0), the
  InfoNCE loss, the VSE∞ warm-up (:class:`ContrastiveLoss`), and one process's share of a global batch's
  loss in data-parallel training (:func:`sharded_triplet_hinge_loss`);
* :mod:`.instance`: Dual-Path's instance loss (:func:`instance_loss`);
* :mod:`.criterion`: :class:`Criterion`, the weighted sum of the terms a config asks for
  (:class:`RankingTerm`, :class:`InstanceTerm`) over a batch's :class:`BatchOutputs`.
"""

from .criterion import BatchOutputs, Criterion, InstanceTerm, RankingTerm, ShardView
from .instance import instance_loss
from .ranking import (
    ContrastiveLoss,
    caption_text_ids,
    negatives_mask,
    query_hinge,
    query_softmax,
    sharded_triplet_hinge_loss,
    triplet_hinge_loss,
)

__all__ = [
    "BatchOutputs",
    "ContrastiveLoss",
    "Criterion",
    "InstanceTerm",
    "RankingTerm",
    "ShardView",
    "caption_text_ids",
    "instance_loss",
    "negatives_mask",
    "query_hinge",
    "query_softmax",
    "sharded_triplet_hinge_loss",
    "triplet_hinge_loss",
]
