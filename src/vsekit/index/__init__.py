"""Encode a collection, index it, search it.

* :class:`Index`: ``Index.build(checkpoint, source, out_dir)`` embeds a folder of images, a Karpathy
  JSON, a CSV / JSONL of paths and captions, or precomputed features (incrementally: a rebuild embeds
  only what is new); ``Index.load(path)`` opens one; ``index.search(text=... | image=... | item=...)``
  answers text→image, image→text, image→image and text→text queries with :class:`Hit` results.
* Backends (:mod:`vsekit.index.backends`): exact search in torch (default) and FAISS indexes from a
  factory string (``pip install 'vsekit[faiss]'``), with their recall@10 measured at build; ``faiss:auto``
  (:mod:`vsekit.index.budget`) chooses an IVF-PQ index from a memory budget and a recall target, re-ranked
  exactly with rows read from disk (:mod:`vsekit.index.rows`), for collections past memory.
* Sources (:mod:`vsekit.index.collection`): what is read from each kind of source, ids and keys.

A build goes reader → mapper → writer: :mod:`~vsekit.index.collection` (with :mod:`~vsekit.index.items` and
:mod:`~vsekit.index.sources`) lists the items, :mod:`~vsekit.index.encode` embeds them (kept in
:mod:`~vsekit.index.pending` until the build commits), :mod:`~vsekit.index.store` writes the files;
:mod:`~vsekit.index.build` runs those steps, incrementally. :mod:`~vsekit.index.search` opens an index and
searches it (:class:`Index`, :class:`Hit`), with :mod:`~vsekit.index.queries` embedding the queries.

The CLI commands ``vsekit encode`` and ``vsekit search`` are thin layers over this API.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the API reference; imported on first use below
    from vsekit.index.backends import ExactBackend, FaissBackend, recall_at_k
    from vsekit.index.collection import Collection, read_collection
    from vsekit.index.hits import Hit, ImageGroup
    from vsekit.index.search import Index

__all__ = ["Collection", "ExactBackend", "FaissBackend", "Hit", "ImageGroup", "Index", "read_collection", "recall_at_k"]

_HOMES = {
    "ExactBackend": "vsekit.index.backends",
    "FaissBackend": "vsekit.index.backends",
    "recall_at_k": "vsekit.index.backends",
    "Collection": "vsekit.index.collection",
    "read_collection": "vsekit.index.collection",
    "Hit": "vsekit.index.hits",
    "ImageGroup": "vsekit.index.hits",
    "Index": "vsekit.index.search",
}
"""Where each name lives: importing the package imports none of them (torch neither), so that
``vsekit.index.hits`` stays light for the HTTP client."""


def __getattr__(name: str) -> Any:
    import importlib

    if name not in _HOMES:
        raise AttributeError(f"module 'vsekit.index' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
