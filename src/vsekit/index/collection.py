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

This module tells a source's kind, checks the options against it and hands it to its reader in
:mod:`vsekit.index.sources`; the item types are in :mod:`vsekit.index.items` (and importable from here).
"""

from __future__ import annotations

import os
from pathlib import Path

from vsekit.data.views import check_views
from vsekit.errors import ConfigError, DataError
from vsekit.index.items import Collection, FeatureRows, ImageItem, TextItem
from vsekit.index.sources import IMAGE_EXTENSIONS, read_folder, read_karpathy, read_precomp, read_table

__all__ = [
    "IMAGE_EXTENSIONS", "SOURCE_KINDS", "Collection", "FeatureRows", "ImageItem", "TextItem", "detect_source_kind",
    "read_collection",
]  # fmt: skip

SOURCE_KINDS: tuple[str, ...] = ("auto", "folder", "karpathy", "csv", "jsonl", "precomp")
"""Values of ``source_kind``."""


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


def _check_options(
    src: Path,
    kind: str,
    image_root: str | os.PathLike | None,
    split: str | None,
    features: str | os.PathLike | None,
    views: tuple[str, ...],
) -> None:
    """Refuse a source of the wrong type for its kind, and options that do not apply to the kind."""
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
    if views:
        check_views(views, "views")
        if kind != "precomp" and features is None:
            raise ConfigError(
                f"views: only for precomputed features (a precomp folder, or a Karpathy JSON with features), not a {kind} source"
            )


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
    views = tuple(views)
    _check_options(src, kind, image_root, split, features, views)
    if kind == "folder":
        col = read_folder(src)
    elif kind == "karpathy":
        col = read_karpathy(
            src, Path(image_root) if image_root is not None else None, split,
            Path(features).absolute() if features is not None else None, views,
        )  # fmt: skip
    elif kind == "precomp":
        col = read_precomp(src, split, views)
    else:
        col = read_table(src, kind)
    if not col.images and not col.texts:
        raise DataError(f"{src}: no images or texts found in this {kind} source")
    return col
