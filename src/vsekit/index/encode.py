"""Embedding the items of a collection in batches, with progress and unreadable files skipped.

Images take the path of :meth:`vsekit.models.VSEModel.encode_image` (which evaluation uses): the
model's ``image_input.collate(..., train=False)`` then ``forward_image``; feature images with test-time
views are averaged over them with :func:`vsekit.evaluation.mean_over_views`, as evaluation does. For raw-image models every
file is read and turned into its S×S network input in a pool of threads (so decoding overlaps the
forward passes and a batch holds S×S tensors, not full-size photos); the result is the same as
collating the batch at once, since each image is resized on its own. Texts go through
:meth:`~vsekit.models.VSEModel.encode_text`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from vsekit.errors import ConfigError, DataError, first_line
from vsekit.evaluation import mean_over_views
from vsekit.index.collection import Collection, ImageItem, TextItem
from vsekit.progress import Progress

__all__ = ["check_image_input", "encode_images", "encode_texts"]

log = logging.getLogger(__name__)


def check_image_input(model: Any, collection: Collection, photos_to_features: bool = False) -> None:
    """Check that the model can read the collection's images (``photos_to_features``: a feature model that can
    turn image files into its features, with the extractor recorded with it).

    Raises:
        ConfigError: if a raw-image model meets precomputed features or a feature model meets image files.
        DataError: if the feature dimension does not match the model's.
    """
    if not collection.images:
        return
    spec = model.image_input
    if spec.kind == "pixels" and collection.features:
        raise ConfigError(
            f"{collection.source}: this model reads raw images (model.image.kind={model.config.image.kind}); "
            "encode a folder of images, a Karpathy JSON (without features) or a CSV/JSONL of image paths instead "
            "of precomputed features"
        )
    if spec.kind == "features":
        if not collection.features:
            if photos_to_features:
                return
            raise ConfigError(
                f"{collection.source}: this model reads precomputed features (model.image.kind="
                f"{model.config.image.kind}) and does not record how they were made (it was not trained on "
                "'vsekit extract' features, or its checkpoint predates the record and its data.features folder "
                "is not here); encode a precomputed-features folder ({split}_ims.npy + {split}_caps.txt), or a "
                "Karpathy JSON with its features (--features DIR), or use a raw-image model"
            )
        for ds in collection.features.values():
            if ds.feature_dim != spec.dim:
                raise DataError(
                    f"{ds.ims_path}: features of dimension {ds.feature_dim}, the model expects "
                    f"model.image.img_dim={spec.dim}"
                )


def _load_one(model_input: Any, collection: Collection, item: ImageItem) -> Any:
    """The network input of one image: an S×3×S tensor row (pixels), K×D arrays (features) of the image and of
    each of the collection's views, or, for a feature model over image files, the decoded H×W×3 photo (its
    extractor makes the features batch by batch)."""
    if item.feature is not None:
        split, i = item.feature
        rows = collection.features[split]
        return [rows.image(i)] + [rows.image(i, view) for view in collection.views]
    from vsekit.data.images import load_image

    photo = load_image(collection.root / str(item.path))
    if model_input.kind == "features":
        return photo
    pixels, _ = model_input.collate([photo], train=False)
    return pixels[0]


def _per_view_inputs(spec: Any, inputs: list[Any], extractor: Any, views: Sequence[str]) -> list[tuple[Any, Any]]:
    """The (batch, lengths) of a batch's loaded items, for the image itself and then each view."""
    if spec.kind == "pixels":
        return [(torch.stack(inputs), torch.ones(len(inputs), dtype=torch.int64))]
    if extractor is not None:  # photos: the features vsekit extract would store, for the image and each view
        return [spec.collate(list(grids), train=False) for grids in extractor(inputs, (None, *views))]
    return [spec.collate([x[v] for x in inputs], train=False) for v in range(len(inputs[0]))]


def encode_images(
    model: Any,
    collection: Collection,
    items: Sequence[ImageItem],
    batch_size: int = 64,
    workers: int = 2,
    progress: Progress | None = None,
    extractor: Any = None,
) -> Iterator[tuple[list[ImageItem], np.ndarray, list[dict[str, str]]]]:
    """Embed image items batch by batch.

    Unreadable images are reported (one warning line each, logger ``vsekit.index``) and left out.

    Args:
        model: a :class:`vsekit.models.VSEModel` (in eval mode, on its device).
        collection: the collection the items belong to.
        items: the images to embed.
        batch_size: images per forward pass.
        workers: threads reading and resizing image files.
        progress: advanced by the items of every batch (skipped ones included).
        extractor: for a feature model over image files, the :class:`vsekit.backbones.extractor.FeatureExtractor` its
            features were made with: each photo gets the features (and views) that ``vsekit extract`` would store.

    Yields:
        ``(items, embeddings, skipped)`` per batch: the items embedded, their len×E float32 embeddings, and
        ``{"path", "reason"}`` of the items skipped in this batch.
    """
    spec = model.image_input
    device = model.device

    def load(item: ImageItem) -> tuple[Any, str | None]:
        try:
            return _load_one(spec, collection, item), None
        except Exception as e:  # noqa: BLE001 - any failure to decode one file is reported, never fatal for the batch
            return None, first_line(e, 300)

    batches = [list(items[a : a + batch_size]) for a in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: list[Future] | None = [pool.submit(load, it) for it in batches[0]] if batches else None
        for n, batch in enumerate(batches):
            assert pending is not None
            loaded = [f.result() for f in pending]
            pending = [pool.submit(load, it) for it in batches[n + 1]] if n + 1 < len(batches) else None
            ok_items, inputs, skipped = [], [], []
            for item, (x, err) in zip(batch, loaded):
                if err is None:
                    ok_items.append(item)
                    inputs.append(x)
                else:
                    where = item.path or item.id
                    log.warning("skipped %s: %s", where, err)
                    skipped.append({"path": where, "reason": err})
            emb = np.zeros((0, model.config.embed_size), np.float32)
            if inputs:
                per_view = _per_view_inputs(spec, inputs, extractor, collection.views)
                with torch.inference_mode():
                    outs = [model.forward_image(images.to(device), lengths.to(device)).float().cpu() for images, lengths in per_view]
                emb = mean_over_views(outs, model.config.image.normalize).numpy()
                ok_items, emb = _finite_only(ok_items, emb, skipped)
            if progress is not None:
                progress.update(len(batch))
            yield ok_items, emb, skipped


def _finite_only(items: list[ImageItem], emb: np.ndarray, skipped: list[dict[str, str]]) -> tuple[list[ImageItem], np.ndarray]:
    """The items whose embeddings are finite; the others join ``skipped`` (NaN would rank first or last at random)."""
    finite = np.isfinite(emb).all(axis=1)
    for item in (it for it, ok in zip(items, finite) if not ok):
        where = item.path or item.id
        log.warning("skipped %s: non-finite embedding", where)
        skipped.append({"path": where, "reason": "the model gave a non-finite embedding (NaN or infinity)"})
    return [it for it, ok in zip(items, finite) if ok], emb[finite]


def encode_texts(
    model: Any, items: Sequence[TextItem], batch_size: int = 64, progress: Progress | None = None
) -> Iterator[tuple[list[TextItem], np.ndarray]]:
    """Embed text items batch by batch.

    Args:
        model: a :class:`vsekit.models.VSEModel`.
        items: the texts to embed.
        batch_size: texts per forward pass.
        progress: advanced by the items of every batch.

    Yields:
        ``(items, embeddings)`` per batch (len×E float32).
    """
    for a in range(0, len(items), batch_size):
        batch = list(items[a : a + batch_size])
        emb = model.encode_text([t.caption for t in batch], batch_size=batch_size).numpy()
        bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
        if bad.size:  # a text has no file to skip: a model that gives NaN for a caption cannot index it
            raise DataError(f"text {batch[int(bad[0])].id!r}: the model gave a non-finite embedding (NaN or infinity)")
        if progress is not None:
            progress.update(len(batch))
        yield batch, emb
