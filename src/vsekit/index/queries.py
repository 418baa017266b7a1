"""Query embeddings: texts, and images given as files, bytes, PIL images or arrays; for a model that reads
features, feature arrays, and images turned into features (and views) the way the index's items were."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vsekit.data.files import read_lines
from vsekit.data.images import open_image
from vsekit.errors import DataError
from vsekit.index.sources import IMAGE_EXTENSIONS
from vsekit.models import embed_photos

__all__ = ["MAX_QUERY_PIXELS", "decode_query_image", "embed_query_images", "embed_query_texts", "read_query_file"]

MAX_QUERY_PIXELS = 40_000_000
"""Largest query image given as bytes (width × height), checked from its header before it is decoded."""


def embed_query_texts(model: Any, texts: Sequence[str]) -> np.ndarray:
    """Embeddings of query texts (B×E float32), each stripped; an empty one is a :class:`DataError`."""
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"text: expected a non-empty query string (query {i})")
    return model.encode_text([t.strip() for t in texts]).numpy()


def decode_query_image(image: Any) -> Any:
    """A query image as the model input accepts it: bytes decoded (size-checked first), paths, PIL images
    and arrays as they are."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return np.array(open_image(image, name="image", max_pixels=MAX_QUERY_PIXELS), dtype=np.uint8)
    if isinstance(image, (str, os.PathLike, np.ndarray)) or type(image).__module__.startswith("PIL."):
        return image
    raise DataError(f"image: expected a file path, bytes, a PIL image or an H×W×3 uint8 array, got {type(image).__name__}")


def embed_query_images(
    model: Any, images: Sequence[Any], feature_extractor: Callable[[], Any], views: Sequence[str]
) -> np.ndarray:
    """Embeddings of query images (B×E float32); see :meth:`vsekit.index.Index.embed_images`.

    Args:
        model: the index's model.
        images: the queries.
        feature_extractor: gives the extractor of the index's features, or None (called only for images
            that a feature model has to turn into features).
        views: the index's test-time views (each such image is embedded as the mean over it and them).
    """
    if model.image_input.kind != "features":
        return model.encode_image([decode_query_image(x) for x in images]).numpy()
    out = np.zeros((len(images), int(model.config.embed_size)), np.float32)
    arrays = {i: x for i, x in enumerate(images) if isinstance(x, (np.ndarray, torch.Tensor)) and np.ndim(x) in (1, 2)}
    if arrays:
        feats = [np.asarray(x, dtype=np.float32) for x in arrays.values()]
        out[list(arrays)] = model.encode_image([f[None] if f.ndim == 1 else f for f in feats]).numpy()
    pictures = {i: decode_query_image(x) for i, x in enumerate(images) if i not in arrays}
    if pictures:
        extractor = feature_extractor()
        if extractor is None:
            raise DataError(
                "image: this index's model reads precomputed features, and the index does not record how they "
                "were made (no features.json from 'vsekit extract' beside them, or an index built before vsekit "
                "recorded it: run its 'vsekit encode' again); give a K×D feature array, or search by item"
            )
        out[list(pictures)] = embed_photos(model, extractor, list(pictures.values()), views).numpy()
    return out


def read_query_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The queries of a file, one a line: ``("image", path)`` where the line names an image file (relative to the
    current folder, or absolute), else ``("text", line)``. Blank lines and lines starting with ``#`` are skipped.

    Raises:
        DataError: if the file cannot be read as UTF-8 text or holds no query.
    """
    source = Path(path)
    queries = []
    for line in read_lines(source):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        candidate = Path(line).expanduser()
        is_image = candidate.suffix.lower() in IMAGE_EXTENSIONS and candidate.is_file()
        queries.append(("image", str(candidate)) if is_image else ("text", line))
    if not queries:
        raise DataError(f"{source}: holds no query (one text or image path a line)")
    return queries
