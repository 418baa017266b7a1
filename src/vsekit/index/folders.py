"""A folder of photos as a searchable collection in one call: :func:`open_folder` indexes the folder with a model
the first time, brings the index up to date when photos were added, changed or removed, and opens it.

>>> from vsekit.index.folders import open_folder
>>> idx = open_folder("~/Pictures/aerial", model="rsicd-aerial")       # doctest: +SKIP
>>> idx.search(text="a playground next to a school", k=5)              # doctest: +SKIP

The index lives inside the folder, in ``.vsekit/<model>/`` (a hidden folder, which folder sources skip), unless
``index_dir`` names another place (a read-only folder, a cache on another disk). ``vsekit search FOLDER`` and
``vsekit serve FOLDER`` use this module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vsekit.errors import CheckpointError, ConfigError, DataError
from vsekit.index.search import Index
from vsekit.index.sources import read_folder
from vsekit.index.store import index_checkpoint, open_part, read_index_json

__all__ = ["INDEXES", "find_folder_index", "folder_index_dir", "folder_is_indexed", "open_folder"]

INDEXES = ".vsekit"
"""The hidden folder inside a photo folder that holds its indexes, one per model."""


def model_slug(model: str | os.PathLike) -> str:
    """A folder name for a model: a ready model's name as it is, other paths with separators made dashes."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(model)).strip("-.")
    return slug or "model"


def folder_index_dir(folder: str | os.PathLike, model: str | os.PathLike) -> Path:
    """Where :func:`open_folder` keeps ``folder``'s index for ``model`` by default: ``folder/.vsekit/<model>``."""
    return Path(folder).expanduser() / INDEXES / model_slug(model)


def find_folder_index(folder: str | os.PathLike) -> Path | None:
    """The one index kept in ``folder/.vsekit/`` (None when there is none).

    Raises:
        ConfigError: when there are several (one per model): the caller must say which model.
    """
    base = Path(folder).expanduser() / INDEXES
    found = sorted(p for p in base.glob("*/index.json")) if base.is_dir() else []
    if len(found) > 1:
        names = ", ".join(p.parent.name for p in found)
        raise ConfigError(f"model: {folder} has indexes for several models ({names}); say which with --model / model=")
    return found[0].parent if found else None


def folder_is_indexed(folder: str | os.PathLike, index_dir: str | os.PathLike, model: str | os.PathLike | None) -> bool:
    """Whether ``index_dir`` holds an index of exactly the photos now in ``folder`` (same files, sizes and
    modification times), made with ``model`` (any model when None).

    Raises:
        DataError: if ``index_dir`` holds an index of another collection.
    """
    index_dir = Path(index_dir)
    if not (index_dir / "index.json").is_file():
        return False
    meta = read_index_json(index_dir)
    root = Path(folder).expanduser().resolve()
    collection = meta["collection"]
    if collection.get("kind") != "folder" or Path(collection.get("root", "")) != root:
        raise DataError(f"index_dir: {index_dir} holds an index of {collection.get('source')}, not of the folder {root}")
    if model is not None:
        try:
            index_checkpoint(index_dir, meta, model)
        except CheckpointError:  # another model (or another version of it): the index must be rebuilt
            return False
    columns = open_part(index_dir, meta, "image", faiss=False).columns
    indexed = set(zip(columns["path"], columns["size"], columns["mtime"]))  # keys may carry the views too
    return indexed == {(item.path, item.size, item.mtime) for item in read_folder(root).images}


def open_folder(
    folder: str | os.PathLike,
    model: str | os.PathLike | None = None,
    *,
    index_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    lazy: bool = True,
    **build_options: Any,
) -> Index:
    """Index a folder of photos with ``model`` where needed, and open the index.

    Args:
        folder: the photo folder (its subfolders too; hidden files and folders are skipped).
        model: a ready model's name (``vsekit models``), a model folder, a run folder or a checkpoint. None: the
            model of the one index already kept in the folder.
        index_dir: where the index lives (default ``folder/.vsekit/<model>``).
        device: where the model runs.
        lazy: when the index is already up to date, load the model only for the first query that needs it
            (see :meth:`Index.load`).
        **build_options: passed to :meth:`Index.build` when the folder must be (re)indexed (``batch_size``,
            ``progress``, ``workers``, ``backend``...).

    Returns:
        The open :class:`Index`; the photos added since the last call are embedded first, and removed ones are
        dropped.

    Raises:
        DataError: if ``folder`` is not a folder, or ``index_dir`` holds an index of something else.
        ConfigError: if no model is given and the folder has no index yet (or has several), or the folder is
            not writable and no ``index_dir`` is given.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"{folder}: not a folder of photos (nor an index folder: it has no index.json)")
    where = Path(index_dir) if index_dir is not None else None
    if model is None:
        where = where if where is not None else find_folder_index(root)
        if where is None or not (where / "index.json").is_file():
            raise ConfigError(
                f"model: {folder} is not indexed yet; give the model to index it with (--model NAME: "
                "a ready model from 'vsekit models', a run folder or a checkpoint)"
            )
    elif where is None:
        where = folder_index_dir(root, model)
    if not folder_is_indexed(root, where, model):
        if index_dir is None and not os.access(root, os.W_OK):
            raise ConfigError(f"index_dir: {folder} is not writable; name a folder for its index (--index-dir DIR)")
        given = model if model is not None else read_index_json(where)["model"]["checkpoint"]
        return Index.build(given, root, where, source_kind="folder", device=device, **build_options)
    return Index.load(where, device, checkpoint=model, lazy=lazy)
