"""The batches of an epoch: their seeded order (a resumed run replays it), this process's slice of each in
data-parallel training, and the DataLoader over them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import TrainConfig
from .distributed import DistContext, SeededCollate, Shard, shard_sizes


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The shuffled batches of one epoch, a pure function of (seed, epoch): a resumed run replays them.

    The last incomplete batch is dropped when there is at least one full batch.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_items)
    n_full = num_items // batch_size
    stop = n_full * batch_size if n_full > 0 else num_items
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


@dataclass
class EpochBatches:
    """One epoch's batches as this process trains on them.

    Attributes:
        batches: the global batches (indices into the training set).
        shards: this process's slice of each global batch (None without data parallelism).
        loader: the collated batches of this process, from the ``first`` batch on (see :func:`epoch_loader`).
    """

    batches: list[np.ndarray]
    shards: list[Shard | None]
    loader: DataLoader


def epoch_loader(
    train_set: Any, collator: Any, cfg: TrainConfig, ctx: DistContext, device: torch.device, epoch: int, first: int
) -> EpochBatches:
    """The batches of ``epoch`` (:func:`epoch_batches`) and a DataLoader that starts at batch ``first`` (a
    resumed epoch). In data-parallel training each process loads its contiguous slice of every global batch,
    collated with augmentation draws seeded by (seed, rank, epoch, the batch's captions)."""
    batches = epoch_batches(len(train_set), cfg.batch_size, cfg.seed, epoch)
    shards: list[Shard | None] = [None] * len(batches)
    local_batches, epoch_collate = batches, collator
    if ctx.enabled:  # this process's contiguous slice of every global batch
        shards = [Shard(ctx.rank, shard_sizes(len(b), ctx.world_size)) for b in batches]
        local_batches = [b[s.offset : s.offset + s.size] for b, s in zip(batches, shards)]
        epoch_collate = SeededCollate(collator, cfg.seed, ctx.rank, epoch)
    loader = DataLoader(
        train_set,
        batch_sampler=local_batches[first:],
        collate_fn=epoch_collate,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps the global RNG (augmentation draws) untouched
    )
    return EpochBatches(batches, shards, loader)
