"""The items of a collection (:class:`ImageItem`, :class:`TextItem`, :class:`Collection`, :class:`FeatureRows`)
and :class:`CollectionBuilder`, which every reader of :mod:`vsekit.index.sources` fills them through.

Ids, keys and the checks on paths are described in :mod:`vsekit.index.collection`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from vsekit.data.files import check_finite_rows, check_float_features, load_features_npy

__all__ = ["Collection", "CollectionBuilder", "FeatureRows", "ImageItem", "TextItem", "text_id"]

log = logging.getLogger("vsekit.index.collection")


@dataclass(frozen=True)
class ImageItem:
    """One image of a collection.

    Attributes:
        id: unique id (the relative path for files, ``{split}/{row}`` for a precomp folder).
        key: content key for incremental encoding.
        path: path relative to the collection root (POSIX), or None for a precomp folder's images (and
            for images of a Karpathy JSON with features whose file is not there).
        size: file size in bytes (the feature file's for precomputed features).
        mtime: modification time in nanoseconds since the epoch (the feature file's for precomputed features).
        feature: ``(split, image index)`` for precomputed features, else None.
    """

    id: str
    key: str
    path: str | None
    size: int
    mtime: int
    feature: tuple[str, int] | None = None


@dataclass(frozen=True)
class TextItem:
    """One text (caption) of a collection.

    Attributes:
        id: unique id.
        key: content key for incremental encoding (image id + text).
        caption: the text.
        image_id: id of the image it describes, or None.
    """

    id: str
    key: str
    caption: str
    image_id: str | None


@dataclass
class Collection:
    """The items of a source.

    Attributes:
        root: the folder that image paths are relative to (absolute, symlinks resolved).
        kind: the source kind (``folder``, ``karpathy``, ``csv``, ``jsonl``, ``precomp``).
        source: the source as given (absolute).
        images: the image items, in source order.
        texts: the text items, in source order.
        skipped: ``{"path", "reason"}`` of entries that were left out (paths outside the root, missing files).
        features: for feature sources (``precomp``, ``karpathy`` with features), the :class:`FeatureRows`
            of every split.
        views: the test-time views every feature image is averaged over (empty: the plain features).
    """

    root: Path
    kind: str
    source: Path
    images: list[ImageItem] = field(default_factory=list)
    texts: list[TextItem] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    features: dict[str, FeatureRows] = field(default_factory=dict)
    views: tuple[str, ...] = ()

    def first_captions(self) -> dict[str, str]:
        """The first caption of every image that has one (image id -> text)."""
        out: dict[str, str] = {}
        for t in self.texts:
            if t.image_id is not None and t.image_id not in out:
                out[t.image_id] = t.caption
        return out


class FeatureRows:
    """The precomputed features of one split of a collection, and of its test-time views.

    Args:
        path: the split's ``{split}_ims.npy`` (N×K×D, or N×D read as sets of one).
        rows_per_image: image i is row ``i * rows_per_image`` (SCAN folders repeat a row per caption).
        views: view name -> an array shaped like the plain one (see
            :func:`vsekit.data.factory.open_feature_views`).

    Raises:
        DataError: naming the file if it is missing or not a floating-point feature array.
    """

    def __init__(self, path: Path, rows_per_image: int = 1, views: dict[str, np.ndarray] | None = None) -> None:
        self.ims_path = path
        self.rows = load_features_npy(path)
        check_float_features(self.rows, str(path))
        self.rows_per_image = rows_per_image
        self.num_images = len(self.rows) // rows_per_image
        self.feature_dim = int(self.rows.shape[-1])
        self.views = dict(views or {})

    def image(self, i: int, view: str | None = None) -> np.ndarray:
        """The float32 K×D features of image ``i`` (in ``view``, or plain)."""
        arr = self.rows if view is None else self.views[view]
        row = np.array(arr[i * self.rows_per_image], dtype=np.float32)
        where = str(self.ims_path) if view is None else f"{self.ims_path} ({view})"
        check_finite_rows(row, where, i * self.rows_per_image)
        return row if row.ndim == 2 else row[None, :]


def text_id(caption: str) -> str:
    """The id of a text that belongs to no image: ``text:`` + 16 hex digits of its SHA-1."""
    return "text:" + hashlib.sha1(caption.encode("utf-8")).hexdigest()[:16]


def _stat_key(rel: str, st: os.stat_result) -> str:
    return f"{rel}\0{st.st_size}\0{st.st_mtime_ns}"


class CollectionBuilder:
    """Accumulates the items of a collection with the checks shared by all sources."""

    def __init__(self, root: Path, kind: str, source: Path) -> None:
        self.col = Collection(root=root, kind=kind, source=source)
        self._images: dict[str, ImageItem] = {}
        self._captions_of: dict[str | None, int] = {}
        self._text_keys: set[str] = set()

    def skip(self, path: str, reason: str) -> None:
        log.warning("skipped %s: %s", path, reason)
        self.col.skipped.append({"path": path, "reason": reason})

    def relative(self, given: str, base: Path) -> str | None:
        """The POSIX path of ``given`` (relative to ``base``, or absolute) relative to the root, or None
        (reported) if it leaves the root, is a symlink to outside it, or is not a file."""
        if "\0" in given:  # no file system allows it; os functions raise ValueError
            self.skip(given.replace("\0", "\\0"), "a file name cannot hold a NUL character")
            return None
        p = Path(given)
        full = p if p.is_absolute() else base / p
        try:
            rel = full.absolute().relative_to(self.col.root)
        except ValueError:
            self.skip(given, f"outside the collection root {self.col.root}")
            return None
        parts = PurePosixPath(rel.as_posix()).parts
        if ".." in parts:
            self.skip(given, f"outside the collection root {self.col.root}")
            return None
        try:
            real = full.resolve(strict=True)
        except (FileNotFoundError, RuntimeError, OSError):
            self.skip(given, "file not found")
            return None
        if not real.is_relative_to(self.col.root):
            self.skip(given, "a link to a file outside the collection root")
            return None
        if not real.is_file():
            self.skip(given, "not a file")
            return None
        return PurePosixPath(*parts).as_posix()

    def add_image_file(self, rel: str) -> str | None:
        """Add the image at ``rel`` (once); returns its id, or None if it cannot be read (reported)."""
        if rel in self._images:
            return rel
        try:
            st = (self.col.root / rel).stat()
        except OSError as e:
            self.skip(rel, f"cannot stat the file ({e.strerror})")
            return None
        item = ImageItem(id=rel, key=_stat_key(rel, st), path=rel, size=int(st.st_size), mtime=int(st.st_mtime_ns))
        self._images[rel] = item
        self.col.images.append(item)
        return rel

    def has_image(self, image_id: str) -> bool:
        """Whether an image with this id was added."""
        return image_id in self._images

    def add_feature_image(self, item: ImageItem) -> None:
        self._images[item.id] = item
        self.col.images.append(item)

    def add_text(self, caption: str, image_id: str | None) -> None:
        caption = caption.strip()
        if not caption:
            return
        key = f"{image_id or ''}\0{caption}"
        if key in self._text_keys:  # the same text twice for the same image (or twice alone): keep one
            return
        self._text_keys.add(key)
        if image_id is None:
            tid = text_id(caption)
        else:
            n = self._captions_of.get(image_id, 0)
            self._captions_of[image_id] = n + 1
            tid = f"{image_id}#{n}"
        self.col.texts.append(TextItem(id=tid, key=key, caption=caption, image_id=image_id))
