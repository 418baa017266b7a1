"""Build the datasets a :class:`vsekit.config.DataConfig` describes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .datasets import CaptionDataset
from .files import load_features_npy
from .views import view_file


def build_dataset(cfg: DataConfig, split: str, max_images: int | None = None, evaluation: bool = False):
    """The caption-indexed dataset of one split.

    Args:
        cfg: the data config.
        split: a split name of that data (``train``/``val``/``test`` for synthetic and Karpathy data;
            the file prefix for the precomp and frames layouts, e.g. ``dev`` or ``testall``).
        max_images: keep only the first images (the official validation uses 1000).
        evaluation: the split is evaluated, not trained on: it carries the test-time views of
            ``cfg.eval_views`` (``{features}/{split}_ims.{view}.npy``); otherwise those of
            ``cfg.train_views``, drawn at random per sample.
    """
    from .datasets import FeatureCaptionDataset, PrecompDataset
    from .karpathy import KarpathyJSON, captions_from_records
    from .synthetic import SyntheticConfig, generate_split, make_synthetic

    k = cfg.captions_per_image
    if cfg.kind == "synthetic":
        ds = generate_split(make_synthetic, SyntheticConfig, cfg.synthetic, split, k)
    elif cfg.kind == "precomp":
        ds = PrecompDataset(cfg.path, split, captions_per_image=k)
    elif cfg.kind == "frames":  # videos: {split}_frames.npy + {split}_offsets.npy + {split}_caps.txt
        from .video import FrameFeatureDataset

        ds = FrameFeatureDataset(cfg.path, split, captions_per_image=k)
    elif cfg.kind == "synthetic_video":  # generated videos; data.synthetic = SyntheticVideoConfig overrides
        from .video import synthetic_video_split

        ds = synthetic_video_split(cfg.synthetic, split, k)
    elif cfg.kind == "karpathy" and not cfg.features and cfg.images:  # raw images, read lazily
        from .images import KarpathyImageDataset

        ds = KarpathyImageDataset(cfg.path, cfg.images, split, k)
    elif cfg.kind == "karpathy":
        records = KarpathyJSON(cfg.path).records(split.split("+"))
        feats_path = Path(cfg.features) / f"{split}_ims.npy"
        if not feats_path.is_file():
            raise DataError(f"{feats_path}: feature file not found (expected rows in the JSON's {split!r} image order)")
        feats = load_features_npy(feats_path)  # a truncated or foreign file is a one-line error
        if feats.ndim != 3 or feats.shape[0] != len(records):
            raise DataError(
                f"{feats_path}: expected {len(records)}×K×D features for split {split!r}, got shape {feats.shape}"
            )
        key = "data.eval_views" if evaluation else "data.train_views"
        views = open_feature_views(cfg.features, split, cfg.eval_views if evaluation else cfg.train_views, feats.shape, key)
        captions = captions_from_records(records, k)
        ds = FeatureCaptionDataset(feats, captions, k, views=views, draw_views=not evaluation, source=str(feats_path))
    else:
        raise ConfigError(f"data.kind: unknown kind {cfg.kind!r}")
    if max_images is not None and max_images < ds.num_images:
        ds = FirstImages(ds, max_images)
    return ds


def open_feature_views(
    features: str | Path, split: str, views: list[str] | tuple[str, ...], shape: tuple[int, ...], field: str
) -> dict[str, np.ndarray]:
    """Memory-map the test-time / training views of a split written by ``vsekit extract --views``.

    Args:
        features: the features folder.
        split: the split (file prefix).
        views: view names (:data:`vsekit.data.views.VIEWS`).
        shape: the shape of the split's plain features, which every view must have.
        field: the config field or option that asked for the views, named in errors.

    Returns:
        view name -> its N×K×D array (``{features}/{split}_ims.{view}.npy``), in the order given.

    Raises:
        DataError: naming the file if a view is missing or shaped unlike the plain features.
    """

    out = {}
    for view in views:
        path = Path(features) / view_file(split, view)
        if not path.is_file():
            raise DataError(f"{path}: view file not found ({field}; make it with vsekit extract --views {view})")
        out[view] = load_features_npy(path)
        if out[view].shape != tuple(shape):
            raise DataError(f"{path}: expected the shape of {view_file(split)}, {tuple(shape)}, got {out[view].shape}")
    return out


class FirstImages(CaptionDataset):
    """A view of the first ``n`` images of a dataset and their captions (the official validation uses
    the first 1000 dev images)."""

    def __init__(self, base: CaptionDataset, n: int) -> None:
        self.base = base
        self.num_images = n
        self.captions_per_image = base.captions_per_image
        self.feature_dim = base.feature_dim
        self.image_kind = getattr(base, "image_kind", "features")
        self.views = getattr(base, "views", {})  # rows past n are never read

    def view_image(self, view: str, i: int) -> np.ndarray:
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {i} out of range for {self.num_images} images")
        return self.base.view_image(view, i)

    def image(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {i} out of range for {self.num_images} images")
        return self.base.image(i)

    def images(self, indices) -> list[np.ndarray]:
        """Several images with the base dataset's batched read (see :meth:`CaptionDataset.images`)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = idx[(idx < 0) | (idx >= self.num_images)]
        if bad.size:
            raise IndexError(f"image index {int(bad[0])} out of range for {self.num_images} images")
        return self.base.images(idx)

    def caption(self, j: int) -> str:
        return self.base.caption(j)
