"""Readers of the collections that ``vsekit encode`` embeds.

A *collection* is a list of image items and a list of text items under one root folder:

* ``folder``: every image file below a folder, recursively (extensions :data:`IMAGE_EXTENSIONS`, case
  insensitive; hidden files and folders skipped); no texts. Image id = the path relative to the folder
  (POSIX separators).
* ``karpathy``: a Karpathy-split JSON (``dataset_coco.json`` style): every record's image
  ``filepath/filename`` under ``image_root`` (default: the JSON's folder) and its captions; optionally
  only some splits.
* ``csv`` / ``jsonl``: a table with a ``path`` and/or a ``caption`` column (JSONL: ``caption`` may
  also be a list of strings, or use ``captions``); paths relative to the table's folder. Rows sharing
  a path give one image with several captions; a row without a path is a text of its own.
* ``precomp``: a precomputed-features folder in the vsekit / SCAN layout (``{split}_ims.npy`` +
  ``{split}_caps.txt``), for models that read features; every split found (or the ones asked for).
* ``karpathy`` with ``features``: the Karpathy JSON's images and captions, embedded from the features
  that ``vsekit extract`` wrote for it (row i of ``{features}/{split}_ims.npy`` is the split's i-th image in
  the JSON, as in training), for models that read features. Image ids and paths are those of the image
  files, so search results point at the pictures; a file that is not there is still indexed, without a
  path. Every split with a feature file (or the ones asked for).

Feature sources can also carry test-time ``views`` (``{split}_ims.{view}.npy``, from ``vsekit extract
--views``): each image is then embedded as the mean over the image and its views, as in evaluation.

Text ids are ``{image id}#{n}`` (the n-th caption of that image, from 0) for captions of an image and
``text:{sha1 of the text, 16 hex}`` for texts on their own. Every item has a *key* that changes when
its content may have changed: path + size + modification time for image files, the file's size and
time + row (+ views) for precomputed features, the image id + text for texts. Incremental encoding re-embeds
exactly the items whose key is new.

Paths that leave the root (``../``, absolute paths elsewhere, symlinks pointing outside) are reported
and skipped, so an index never refers to a file outside its collection.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vsekit.data.datasets import check_float_features, load_features_npy
from vsekit.data.views import check_views
from vsekit.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS", "SOURCE_KINDS", "Collection", "FeatureRows", "ImageItem", "TextItem", "detect_source_kind",
    "read_collection",
]  # fmt: skip

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File extensions (lower case) that a ``folder`` source collects."""

SOURCE_KINDS: tuple[str, ...] = ("auto", "folder", "karpathy", "csv", "jsonl", "precomp")
"""Values of ``source_kind``."""


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
        return row if row.ndim == 2 else row[None, :]


def text_id(caption: str) -> str:
    """The id of a text that belongs to no image: ``text:`` + 16 hex digits of its SHA-1."""
    return "text:" + hashlib.sha1(caption.encode("utf-8")).hexdigest()[:16]


def detect_source_kind(source: Path) -> str:
    """The kind of a source from what it is: a folder with ``*_ims.npy`` files is ``precomp``, another
    folder ``folder``; a ``.json`` file ``karpathy``, ``.csv`` ``csv``, ``.jsonl`` ``jsonl``.

    Raises:
        DataError: if the source does not exist or its kind cannot be told.
    """
    if source.is_dir():
        return "precomp" if any(source.glob("*_ims.npy")) else "folder"
    if not source.exists():
        raise DataError(f"source not found: {source}")
    suffix = source.suffix.lower()
    kinds = {".json": "karpathy", ".csv": "csv", ".jsonl": "jsonl"}
    if suffix not in kinds:
        raise DataError(
            f"{source}: cannot tell the source kind from the extension {suffix!r}; expected a folder, a Karpathy "
            ".json, a .csv or a .jsonl (or pass source_kind)"
        )
    return kinds[suffix]


def _stat_key(rel: str, st: os.stat_result) -> str:
    return f"{rel}\0{st.st_size}\0{st.st_mtime_ns}"


class _Builder:
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


def _read_folder(source: Path) -> Collection:
    source = source.resolve()
    b = _Builder(source, "folder", source)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            rel = b.relative((base / name).relative_to(source).as_posix(), source)
            if rel is not None:
                found.append(rel)
    for rel in sorted(found):
        b.add_image_file(rel)
    return b.col


def _feature_split(folder: Path, name: str, rows_per_image: int, views: tuple[str, ...]) -> FeatureRows:
    from vsekit.data.factory import open_feature_views

    rows = FeatureRows(folder / f"{name}_ims.npy", rows_per_image)
    rows.views = open_feature_views(folder, name, list(views), rows.rows.shape, "views")
    return rows


def _feature_stamp(name: str, rows: FeatureRows) -> str:
    """What changes when a split's feature file or one of its view files is written again (sizes, times);
    a row's key is ``{split}/{row}`` + this."""
    st = rows.ims_path.stat()
    stamp = f"\0{st.st_size}\0{st.st_mtime_ns}"
    for view in rows.views:
        vst = (rows.ims_path.parent / f"{name}_ims.{view}.npy").stat()
        stamp += f"\0{view}:{vst.st_size}:{vst.st_mtime_ns}"
    return stamp


def _read_karpathy_features(source: Path, root: Path, split: str | None, features: Path, views: tuple[str, ...]) -> Collection:
    from vsekit.data.datasets import KarpathyJSON

    if not features.is_dir():
        raise DataError(f"features: folder not found: {features}")
    data = KarpathyJSON(source)
    if split:
        names = split.split("+")
    else:
        names = [s for s in data.splits() if (features / f"{s}_ims.npy").is_file()]
        if not names:
            raise DataError(f"{features}: no {{split}}_ims.npy file for any split of {source.name} (see 'vsekit extract')")
    b = _Builder(root, "karpathy", source)
    b.col.views = views
    for name in names:
        records = data.records([name])
        rows = _feature_split(features, name, 1, views)
        if rows.num_images != len(records):
            raise DataError(
                f"{rows.ims_path}: {rows.num_images} feature rows for the {len(records)} {name!r} images of "
                f"{source.name} (expected one row per image, in the JSON's order)"
            )
        b.col.features[name] = rows
        st, stamp = rows.ims_path.stat(), _feature_stamp(name, rows)
        for i, r in enumerate(records):
            rel = PurePosixPath(r.filepath, r.filename).as_posix()
            inside = not PurePosixPath(rel).is_absolute() and ".." not in PurePosixPath(rel).parts
            path = rel if inside and (root / rel).is_file() else None  # the picture, shown with results
            if rel in b._images:
                raise DataError(f"{source}: image {rel} is listed twice")
            b.add_feature_image(
                ImageItem(id=rel, key=f"{name}/{i}{stamp}", path=path, size=int(st.st_size),
                          mtime=int(st.st_mtime_ns), feature=(name, i))
            )  # fmt: skip
            for c in r.captions:
                b.add_text(c, rel)
    return b.col


def _read_karpathy(
    source: Path, image_root: Path | None, split: str | None, features: Path | None = None, views: tuple[str, ...] = ()
) -> Collection:
    from vsekit.data.datasets import KarpathyJSON

    root = (image_root if image_root is not None else source.parent).resolve()
    if features is not None:
        return _read_karpathy_features(source, root, split, features, views)
    data = KarpathyJSON(source)
    if not root.is_dir():
        raise DataError(f"image_root: folder not found: {root}")
    b = _Builder(root, "karpathy", source)
    records = data.records(split.split("+")) if split else data.records(list(data.splits()))
    for r in records:
        rel = b.relative(str(PurePosixPath(r.filepath) / r.filename), root)
        image_id = b.add_image_file(rel) if rel is not None else None
        if image_id is None:
            continue
        for c in r.captions:
            b.add_text(c, image_id)
    return b.col


def _rows_csv(source: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        with open(source, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if not {"path", "caption"} & set(fields):
                raise DataError(f"{source}: expected a header row with a 'path' and/or a 'caption' column, got {fields}")
            reader.fieldnames = fields
            return [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise DataError(f"{source}: expected UTF-8 text") from None
    except csv.Error as e:
        raise DataError(f"{source}: malformed CSV ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {source}: {e.strerror}") from None


def _rows_jsonl(source: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        lines = source.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{source}: expected UTF-8 text") from None
    except OSError as e:
        raise DataError(f"cannot read {source}: {e.strerror}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}: line {n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{source}: line {n}: expected a JSON object with 'path' and/or 'caption'")
        rows.append((n, row))
    return rows


def _read_table(source: Path, kind: str) -> Collection:
    rows = _rows_csv(source) if kind == "csv" else _rows_jsonl(source)
    base = source.parent.resolve()
    b = _Builder(base, kind, source)
    for n, row in rows:
        path = row.get("path")
        captions: Any = row.get("caption", row.get("captions"))
        if path is not None and not isinstance(path, str):
            raise DataError(f"{source}: line {n}: 'path' must be a string, got {type(path).__name__}")
        if captions is None or isinstance(captions, str):
            captions = [] if captions is None else [captions]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise DataError(f"{source}: line {n}: 'caption' must be a string or a list of strings")
        path = (path or "").strip()
        if not path and not any(c.strip() for c in captions):
            raise DataError(f"{source}: line {n}: expected a 'path' or a 'caption'")
        image_id = None
        if path:
            rel = b.relative(path, base)
            image_id = b.add_image_file(rel) if rel is not None else None
            if image_id is None:
                continue  # the row's captions describe an image that is not there: leave them out too
        for c in captions:
            b.add_text(c, image_id)
    return b.col


def _read_precomp(source: Path, split: str | None, views: tuple[str, ...] = ()) -> Collection:
    from vsekit.data.datasets import PrecompDataset

    root = source.resolve()
    b = _Builder(root, "precomp", source)
    b.col.views = views
    names = split.split("+") if split else sorted(p.name[: -len("_ims.npy")] for p in root.glob("*_ims.npy"))
    if not names:
        raise DataError(f"{root}: no {{split}}_ims.npy file (expected the precomputed-features layout)")
    for name in names:
        ds = PrecompDataset(root, name)
        st = ds.ims_path.stat()
        b.col.features[name] = _feature_split(root, name, ds.rows_per_image, views)
        stamp = _feature_stamp(name, b.col.features[name])
        for i in range(ds.num_images):
            image_id = f"{name}/{i}"
            key = f"{image_id}{stamp}"
            b.add_feature_image(
                ImageItem(id=image_id, key=key, path=None, size=int(st.st_size), mtime=int(st.st_mtime_ns), feature=(name, i))
            )
            for j in range(i * ds.captions_per_image, (i + 1) * ds.captions_per_image):
                b.add_text(ds.caption(j), image_id)
    return b.col


def read_collection(
    source: str | os.PathLike,
    source_kind: str = "auto",
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    features: str | os.PathLike | None = None,
    views: tuple[str, ...] | list[str] = (),
) -> Collection:
    """Read the items of a source (see the module docstring for the kinds).

    Args:
        source: a folder of images, a Karpathy JSON, a CSV / JSONL table, or a precomputed-features folder.
        source_kind: one of :data:`SOURCE_KINDS` (``auto`` tells it from the source).
        image_root: Karpathy JSON only: the folder holding the images (default: the JSON's folder).
        split: Karpathy JSON / precomp only: the split(s) to read, joined with ``+`` (default: all; with
            ``features``, all that have a feature file).
        features: Karpathy JSON only: the folder ``vsekit extract`` wrote its features to; the images are
            then read from there (for models that read features).
        views: feature sources only: test-time views (:data:`vsekit.data.views.VIEWS`) to average every
            image over; their ``{split}_ims.{view}.npy`` files must be there.

    Returns:
        The :class:`Collection`.

    Raises:
        ConfigError: for an unknown ``source_kind`` or an option that does not apply to it.
        DataError: if the source is missing or malformed, or holds no item.
    """
    if source_kind not in SOURCE_KINDS:
        raise ConfigError(f"source_kind: expected one of {', '.join(SOURCE_KINDS)}, got {source_kind!r}")
    src = Path(source).absolute()
    kind = detect_source_kind(src) if source_kind == "auto" else source_kind
    if kind in ("folder", "precomp") and not src.is_dir():
        raise DataError(f"{src}: expected a folder for source kind {kind!r}")
    if kind in ("karpathy", "csv", "jsonl") and not src.is_file():
        raise DataError(f"{src}: expected a file for source kind {kind!r}")
    if image_root is not None and kind != "karpathy":
        raise ConfigError(f"image_root: only applies to Karpathy JSON sources, not to a {kind} source")
    if split is not None and kind not in ("karpathy", "precomp"):
        raise ConfigError(f"split: only applies to Karpathy JSON and precomp sources, not to a {kind} source")
    if features is not None and kind != "karpathy":
        raise ConfigError(f"features: only applies to Karpathy JSON sources, not to a {kind} source")
    views = tuple(views)
    if views:

        check_views(views, "views")
        if kind != "precomp" and features is None:
            raise ConfigError(f"views: only for precomputed features (a precomp folder, or a Karpathy JSON with features), not a {kind} source")
    if kind == "folder":
        col = _read_folder(src)
    elif kind == "karpathy":
        col = _read_karpathy(
            src, Path(image_root) if image_root is not None else None, split,
            Path(features).absolute() if features is not None else None, views,
        )  # fmt: skip
    elif kind == "precomp":
        col = _read_precomp(src, split, views)
    else:
        col = _read_table(src, kind)
    if not col.images and not col.texts:
        raise DataError(f"{src}: no images or texts found in this {kind} source")
    return col
