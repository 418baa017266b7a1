"""Batching: padding variable-size region sets and captions into tensors.

The batch keeps the order of the samples (it is not sorted by length; the encoders pack sequences with
``enforce_sorted=False``). Data augmentation is done by the encoders, on tensors, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from vsekit.errors import DataError


@dataclass(eq=False)
class Batch:
    """A batch of (image, caption) pairs.

    Attributes:
        images: ``(B, Kmax, D)`` float32 feature sets, zero-padded after ``image_lengths[b]`` rows, or
            ``(B, 3, H, W)`` float32 pixels for raw-image models.
        image_lengths: ``(B,)`` int64 number of set elements of every image (raw images: the number of
            grid cells, or ones).
        captions: ``(B, Tmax)`` int64 token ids, padded with the vocabulary's ``pad_id``.
        caption_lengths: ``(B,)`` int64 number of tokens (``<start>`` and ``<end>`` included).
        image_ids: ``(B,)`` int64 image index in the dataset.
        caption_ids: ``(B,)`` int64 caption index in the dataset.
    """

    images: Tensor
    image_lengths: Tensor
    captions: Tensor
    caption_lengths: Tensor
    image_ids: Tensor
    caption_ids: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _map(self, fn: Any) -> Batch:
        return Batch(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Return a copy with every tensor moved to ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Return a copy in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        return self._map(lambda t: t.pin_memory())


def collate_images(arrays: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Zero-pad a list of ``(K_i, D)`` feature sets into one tensor.

    Args:
        arrays: one ``(K_i, D)`` array (or tensor) per image.

    Returns:
        ``(B, Kmax, D)`` float32 features and ``(B,)`` int64 lengths ``K_i``.

    Raises:
        DataError: if the list is empty, an array is not 2-D or the dimensions differ.
    """
    if len(arrays) == 0:
        raise DataError("collate_images: expected at least one image")
    arrays = [np.asarray(a) for a in arrays]
    for i, a in enumerate(arrays):
        if a.ndim != 2:
            raise DataError(f"collate_images: image {i}: expected a (K, D) array, got shape {a.shape}")
    dims = {a.shape[1] for a in arrays}
    if len(dims) > 1:
        raise DataError(f"collate_images: expected one feature dimension, got {sorted(dims)}")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    if int(lengths.min()) == int(lengths.max()):  # equal set sizes (e.g. 36 BUTD regions): one copy
        return torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False)), torch.from_numpy(lengths)
    out = np.zeros((len(arrays), int(lengths.max()), dims.pop()), dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return torch.from_numpy(out), torch.from_numpy(lengths)


def collate_captions(id_lists: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Pad token id lists into one tensor.

    Args:
        id_lists: one list of token ids per caption.
        pad_id: id used for padding.

    Returns:
        ``(B, Tmax)`` int64 ids and ``(B,)`` int64 lengths.

    Raises:
        DataError: if the list is empty.
    """
    if len(id_lists) == 0:
        raise DataError("collate_captions: expected at least one caption")
    lengths = [len(ids) for ids in id_lists]
    out = torch.full((len(id_lists), max(max(lengths), 1)), pad_id, dtype=torch.int64)
    for i, ids in enumerate(id_lists):
        if lengths[i]:
            out[i, : lengths[i]] = torch.as_tensor(list(ids), dtype=torch.int64)
    return out, torch.tensor(lengths, dtype=torch.int64)


class FeatureInput:
    """Collates dataset images given as ``K_i×D`` feature sets into padded tensors + lengths.

    Args:
        dim: the expected feature dimension ``D``.
    """

    kind = "features"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def collate(self, arrays: list[Any], train: bool = False) -> tuple[Tensor, Tensor]:
        """``arrays``: one ``K_i×D`` array (or tensor) per image. Returns ``(B×Kmax×D, B)``."""
        for a in arrays:
            shape = tuple(a.shape)
            if len(shape) != 2 or shape[1] != self.dim or shape[0] == 0:
                raise DataError(
                    f"images: expected each image as a K×{self.dim} feature set (model.image.img_dim={self.dim}), "
                    f"got shape {shape}"
                )
        return collate_images([a.detach().float().cpu().numpy() if isinstance(a, Tensor) else a for a in arrays])


class Collator:
    """``collate_fn`` for a :class:`~torch.utils.data.DataLoader` over a caption dataset.

    Picklable, so it works in DataLoader worker processes.

    Args:
        tokenizer: turns captions into token ids (``encode``, ``pad_id``): a :class:`vsekit.text.Vocabulary` or the
            model's tokenizer.
        image_input: how images become tensors (the model's ``image_input``); default: feature sets.
        train: passed to ``image_input.collate`` (random crops and flips for raw images in training).
    """

    def __init__(self, tokenizer: Any, image_input: Any = None, train: bool = True) -> None:
        self.tokenizer = tokenizer
        self.image_input = image_input
        self.train = train

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        """Collate dataset items (``{"image", "caption", "image_id", "caption_id"}``) into a :class:`Batch`.

        Args:
            samples: the items, in batch order (the order is kept).

        Returns:
            The batch.
        """
        arrays = [s["image"] for s in samples]
        if self.image_input is None:
            images, image_lengths = collate_images(arrays)
        else:
            images, image_lengths = self.image_input.collate(arrays, train=self.train)
        captions, caption_lengths = collate_captions(
            [self.tokenizer.encode(s["caption"]) for s in samples], self.tokenizer.pad_id
        )
        return Batch(
            images=images,
            image_lengths=image_lengths,
            captions=captions,
            caption_lengths=caption_lengths,
            image_ids=torch.tensor([int(s["image_id"]) for s in samples], dtype=torch.int64),
            caption_ids=torch.tensor([int(s["caption_id"]) for s in samples], dtype=torch.int64),
        )
