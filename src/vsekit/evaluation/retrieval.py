"""Evaluation of a model on a dataset: encode every image once and every caption once, then score."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..models import mean_over_views
from .metrics import evaluate_protocol, evaluate_sims


def encode_dataset(
    model: Any, dataset: Any, batch_size: int = 256, on_progress: Callable[[int], None] | None = None
) -> tuple[Tensor, Tensor]:
    """Embed a caption-indexed dataset.

    Each image is encoded once (not once per caption, as the official loaders do). A dataset with test-time
    ``views`` (``data.eval_views``) gives each image the mean of its embeddings over the plain image and
    every view (re-normalised when the model normalises image embeddings).

    Args:
        model: a :class:`vsekit.models.VSEModel`.
        dataset: a dataset following the :mod:`vsekit.data` contract.
        batch_size: items per forward pass.
        on_progress: called with the number of items done after each batch (for progress bars).

    Returns:
        ``(image_embeddings, caption_embeddings)``: num_images×E and num_captions×E float32 CPU tensors.
    """
    images, captions = [], []
    views = getattr(dataset, "views", None) or {}
    for start in range(0, dataset.num_images, batch_size):
        stop = min(start + batch_size, dataset.num_images)
        embs = [model.encode_image([dataset.image(i) for i in range(start, stop)], batch_size=batch_size)]
        for view in views:
            embs.append(model.encode_image([dataset.view_image(view, i) for i in range(start, stop)], batch_size=batch_size))
        images.append(mean_over_views(embs, model.config.image.normalize))
        if on_progress:
            on_progress(stop - start)
    all_captions = dataset.captions()
    for start in range(0, len(all_captions), batch_size):
        chunk = all_captions[start : start + batch_size]
        captions.append(model.encode_text(chunk, batch_size=batch_size))
        if on_progress:
            on_progress(len(chunk))
    dim = model.config.embed_size
    img = torch.cat(images) if images else torch.empty(0, dim)
    cap = torch.cat(captions) if captions else torch.empty(0, dim)
    return img, cap


def similarity_matrix(model: Any, dataset: Any, batch_size: int = 256) -> np.ndarray:
    """The images × captions similarity matrix of ``model`` on ``dataset`` (float32)."""
    img, cap = encode_dataset(model, dataset, batch_size)
    return model.similarity(img, cap).numpy()


def evaluate_model(
    model: Any, dataset: Any, protocol: str | None = None, folds: int = 1, batch_size: int = 256
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on ``dataset``.

    Args:
        model: a :class:`vsekit.models.VSEModel`.
        dataset: a caption-indexed dataset with ``captions_per_image`` captions per image.
        protocol: a protocol name of :data:`vsekit.evaluation.PROTOCOLS` (``coco1k``, ``coco5k``,
            ``f30k``, ``kcaptions``); when ``None``, ``folds`` sequential folds are used.
        folds: number of folds when no protocol is given.
        batch_size: items per forward pass.
    """
    sims = similarity_matrix(model, dataset, batch_size)
    if protocol is not None:
        return evaluate_protocol(sims, protocol)
    return evaluate_sims(sims, captions_per_image=dataset.captions_per_image, folds=folds)
