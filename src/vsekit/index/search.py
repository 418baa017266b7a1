"""Opening an index and searching it: :class:`Index` and its results, :class:`Hit`.

>>> from vsekit.index import Index
>>> idx = Index.build("runs/photos/best.pt", "~/Pictures", "photos.index")   # doctest: +SKIP
>>> for hit in idx.search(text="a dog on a beach", k=5):                     # doctest: +SKIP
...     print(hit.rank, f"{hit.score:.3f}", hit.path)

:meth:`Index.build` runs :func:`vsekit.index.build.build_index`; the files it writes and :meth:`Index.load`
reads are described in :mod:`vsekit.index.store`; queries are embedded by :mod:`vsekit.index.queries`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vsekit.errors import CheckpointError, ConfigError, DataError
from vsekit.index.hits import Hit
from vsekit.index.grouped import GROUPS, search_grouped
from vsekit.index.build import BuildOptions, build_index, positive_int
from vsekit.index.queries import embed_query_images, embed_query_texts
from vsekit.index.store import MODALITIES, IndexPart, index_checkpoint, open_part, read_index_json

__all__ = ["Hit", "Index"]


def checked_model(folder: Path, meta: dict[str, Any], model: Any) -> Any:
    """``model`` if it makes embeddings of the index's size.

    Raises:
        CheckpointError: if the sizes differ.
    """
    if int(model.config.embed_size) != int(meta["dim"]):
        raise CheckpointError(f"{folder}: the index holds {meta['dim']}-d embeddings, the model makes {model.config.embed_size}-d")
    return model


class Index:
    """A searchable index of a collection's image and text embeddings (see the module docstring).

    Create one with :meth:`build` or open one with :meth:`load`.

    Attributes:
        path: the index folder.
        root: the collection root (image paths are relative to it).
        model: the :class:`vsekit.models.VSEModel` that embeds queries.
    """

    def __init__(
        self, path: Path, meta: dict[str, Any], model: Any, parts: dict[str, IndexPart], *, load_model: Any = None
    ) -> None:
        self.path = path
        self.meta = meta
        self.root = Path(meta["collection"]["root"])
        self._model = model
        self._load_model = load_model  # called once on first use when the index was opened with lazy=True
        self._model_lock = threading.Lock()
        self._parts = parts
        self._extractor: Any = None  # the feature extractor of query images (feature models), made when first needed
        self._extractor_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Index({str(self.path)!r}, images={self._parts['image'].count}, texts={self._parts['text'].count}, "
            f"backend={self.meta['backend']!r})"
        )

    # -- opening -------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        *,
        checkpoint: str | os.PathLike | None = None,
        lazy: bool = False,
    ) -> Index:
        """Open an index folder: embeddings memory-mapped, metadata read, the model loaded once.

        Args:
            path: the index folder (written by :meth:`build` / ``vsekit encode``).
            device: where the model runs (``cpu``, ``cuda``, ``auto``).
            checkpoint: the model's checkpoint if it moved since the build (it must be the same file:
                its SHA-256 is checked).
            lazy: find and load the model only when a query needs it (a text or an image): searches by an
                indexed item, :meth:`item` and :meth:`stats` then never read the checkpoint, which is what
                keeps ``vsekit search --item`` as fast as opening the files.

        Raises:
            DataError: if the folder is not a readable index.
            CheckpointError: if the checkpoint is missing or is not the one the index was built with (with
                ``lazy``, raised by the first query that needs the model).
        """
        folder = Path(path)
        meta = read_index_json(folder)

        def load_model() -> Any:
            from vsekit.checkpoint import load

            return checked_model(folder, meta, load(index_checkpoint(folder, meta, checkpoint), device))

        parts = {m: open_part(folder, meta, m) for m in MODALITIES}
        if lazy:
            return cls(folder, meta, None, parts, load_model=load_model)
        return cls(folder, meta, load_model(), parts)

    @property
    def model(self) -> Any:
        """The :class:`vsekit.models.VSEModel` that embeds queries (loaded on first use after ``lazy=True``)."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    self._model = self._load_model()
        return self._model

    # -- building ------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        checkpoint: str | os.PathLike,
        source: str | os.PathLike,
        out_dir: str | os.PathLike,
        *,
        source_kind: str = "auto",
        backend: str = "exact",
        batch_size: int = 64,
        device: str = "cpu",
        progress: bool = True,
        image_root: str | os.PathLike | None = None,
        split: str | None = None,
        features: str | os.PathLike | None = None,
        views: Sequence[str] | None = None,
        search_params: str | None = None,
        shard_size: int = 65536,
        workers: int = 2,
        recall_queries: int = 1000,
        checkpoint_every: int = 4096,
        checkpoint_seconds: float = 30.0,
        max_index_memory: int | str | None = None,
        min_recall: float | None = None,
    ) -> Index:
        """Embed a collection into an index folder, or bring an existing index up to date.

        Args:
            checkpoint: a vsekit checkpoint file, or a run folder (its ``best.pt``, else ``last.pt``).
            source: a folder of images (recursive), a Karpathy JSON, a CSV / JSONL with ``path`` and/or
                ``caption`` columns, or a precomputed-features folder (see :mod:`vsekit.index.collection`).
            out_dir: the index folder (created; an index already there is updated incrementally).
            source_kind: ``auto``, ``folder``, ``karpathy``, ``csv``, ``jsonl`` or ``precomp``.
            backend: ``"exact"`` (torch, no extra dependency) or ``"faiss:<factory string>"`` (inner
                product, e.g. ``"faiss:IVF256,Flat"``, ``"faiss:HNSW32"``; ``pip install 'vsekit[faiss]'``).
                For an approximate backend its recall@10 against exact search is measured and stored.
                ``"faiss:auto"`` chooses an IVF-PQ index, its ``nprobe`` and an exact re-ranking from disk
                under ``max_index_memory`` that reaches ``min_recall`` (see :mod:`vsekit.index.budget`).
            batch_size: items per forward pass.
            device: where the model runs (``cpu``, ``cuda``, ``auto``).
            progress: show progress bars (items/s, ETA) and the summary on stderr.
            image_root: Karpathy JSON: the image folder (default: the JSON's folder).
            split: Karpathy JSON / precomp: only these splits (``test`` or ``train+val``).
            features: Karpathy JSON: the folder ``vsekit extract`` wrote the JSON's features to, for a
                model that reads features (row i of ``{split}_ims.npy`` = the split's i-th image).
            views: feature sources: test-time views to average each image over (``{split}_ims.{view}.npy``
                next to the features). ``None`` takes the checkpoint's ``data.eval_views``, so the index
                holds the embeddings that evaluation scored; ``[]`` embeds the plain features only.
            search_params: FAISS search parameters (default ``nprobe=16`` for IVF, ``efSearch=64`` for HNSW).
            shard_size: most rows per embedding shard file.
            workers: threads reading and resizing image files.
            recall_queries: held-out queries for the recall measurement of an approximate backend.
            checkpoint_every: new embeddings are flushed to ``pending/`` every this many items, or
            checkpoint_seconds: every this many seconds, whichever comes first; a killed build keeps them.
            max_index_memory: ``faiss:auto`` only: the memory budget of each index and its build, in bytes or
                as ``"2GB"`` / ``"512MB"`` (powers of 1024; default 2 GiB).
            min_recall: ``faiss:auto`` only: the recall@10 the chosen index must reach (default 0.9).

        Returns:
            The loaded :class:`Index`.

        Raises:
            ConfigError: for an invalid option, or a model that cannot read this kind of source.
            DataError: for a missing or malformed source, or an ``out_dir`` that is not an index.
            CheckpointError: for an unreadable checkpoint.
        """
        options = BuildOptions(
            source_kind=source_kind, backend=backend, batch_size=batch_size, device=device, progress=progress,
            image_root=image_root, split=split, features=features, views=views, search_params=search_params,
            shard_size=shard_size, workers=workers, recall_queries=recall_queries, checkpoint_every=checkpoint_every,
            checkpoint_seconds=checkpoint_seconds, max_index_memory=max_index_memory, min_recall=min_recall,
        )  # fmt: skip
        folder, meta, model = build_index(checkpoint, source, out_dir, options)
        return cls(folder, meta, checked_model(folder, meta, model), {m: open_part(folder, meta, m) for m in MODALITIES})

    # -- items -----------------------------------------------------------------------------------------
    def _locate(self, item_id: str) -> tuple[str, int]:
        if not isinstance(item_id, str):
            raise DataError(f"item: expected an item id string, got {type(item_id).__name__}")
        for m in MODALITIES:
            r = self._parts[m].rows.get(item_id)
            if r is not None:
                return m, r
        raise DataError(f"item: unknown id {item_id[:200]!r} (not in index {self.path})")

    def item(self, id: str) -> dict[str, Any]:
        """Metadata of one item: id, modality, path, caption, image_id (captions), size and mtime (images).

        Raises:
            DataError: if no item has this id.
        """
        m, r = self._locate(id)
        cols = self._parts[m].columns
        return {"id": id, "modality": m, **{c: cols[c][r] for c in ("path", "caption", "image_id", "size", "mtime")}}

    def resolve_path(self, id: str) -> Path:
        """The absolute file of an image item, guaranteed inside the collection root.

        The stored relative path is resolved (symlinks followed) and must stay below the resolved root
        and be a file.

        Raises:
            DataError: if the id is unknown, has no file, or its file is outside the root or missing.
        """
        m, r = self._locate(id)
        rel = self._parts[m].columns["path"][r] if m == "image" else None
        if not rel:
            raise DataError(f"item {id!r}: has no image file")
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise DataError(f"item {id!r}: path {rel!r} leaves the collection root")
        root = self.root.resolve()
        try:
            full = (root / rel).resolve(strict=True)
        except (FileNotFoundError, RuntimeError, OSError):
            raise DataError(f"item {id!r}: file {rel!r} not found under {root}") from None
        if not full.is_relative_to(root) or not full.is_file():
            raise DataError(f"item {id!r}: file {rel!r} resolves outside the collection root {root}")
        return full

    def embedding(self, id: str) -> np.ndarray:
        """The stored embedding of an item (float32, E)."""
        m, r = self._locate(id)
        return self._parts[m].exact.row(r)

    # -- queries ---------------------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Query embeddings of texts (B×E float32)."""
        return embed_query_texts(self.model, texts)

    def feature_extractor(self) -> Any:
        """The :class:`vsekit.backbones.extractor.FeatureExtractor` that made this feature index's features, on the model's
        device (built on first use), or None where the index does not record one (other models; feature
        folders without ``features.json``)."""
        settings = self.meta["collection"].get("extractor")
        if settings is None or self.model.image_input.kind != "features":
            return None
        with self._extractor_lock:
            if self._extractor is None:
                from vsekit.backbones.extractor import FeatureExtractor

                where = f"{self.path / 'index.json'} (collection.extractor)"
                self._extractor = FeatureExtractor.from_metadata(settings, where, device=str(self.model.device))
            return self._extractor

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Query embeddings of images (B×E float32).

        Raw-image models take paths, bytes, PIL images or H×W×3 uint8 arrays. Feature models take K×D feature
        arrays (embedded as they are), and the same images where the index records the extractor of its
        features (``vsekit extract``): their features and the index's views are computed as for the indexed
        images, and the embedding is the mean over the views, as the indexed images' is.
        """
        views = self.meta["collection"].get("views") or []
        return embed_query_images(self.model, images, self.feature_extractor, views)

    def _check_query(self, k: Any, offset: Any, target: Any) -> tuple[int, int, str]:
        k = positive_int(k, "k")
        offset = positive_int(offset, "offset", minimum=0)
        if target not in MODALITIES:
            raise ConfigError(f"target: expected 'image' or 'text', got {target!r}")
        if self._parts[target].count == 0:
            raise DataError(f"target: index {self.path} holds no {target}s")
        return k, offset, target

    def _rank(self, q: np.ndarray, qmod: str, k: int, offset: int, target: str, exclude: list[int] | None) -> list[list[Hit]]:
        part = self._parts[target]
        if qmod == target or self.meta["model"]["similarity"] == "cosine":
            score, backend = "dot", part.backend
        else:
            score, backend = ("order_query_text" if qmod == "text" else "order_query_image"), part.exact
        if not np.isfinite(q).all():
            raise DataError("query: its embedding is not finite (NaN or infinity in the query's features?)")
        want = k + offset + (1 if exclude is not None else 0)
        scores, rows = backend.search(q, want, score)
        cols = part.columns
        bad = ~np.isfinite(scores) & (rows >= 0)
        if bad.any():  # an index written before encode refused them: NaN would rank at random
            first = cols["id"][int(rows[bad][0])]
            raise DataError(f"{self.path}: item {first!r} has a non-finite embedding; rebuild the index with vsekit encode")
        results = []
        for b in range(len(q)):
            kept = [(float(s), int(r)) for s, r in zip(scores[b], rows[b]) if r >= 0 and (exclude is None or r != exclude[b])]
            page = kept[offset : offset + k]
            results.append([
                Hit(rank=offset + n + 1, score=s, id=cols["id"][r], modality=target, path=cols["path"][r], caption=cols["caption"][r])
                for n, (s, r) in enumerate(page)
            ])  # fmt: skip
        return results

    def search(
        self,
        text: str | None = None,
        image: Any = None,
        item: str | None = None,
        k: int = 10,
        offset: int = 0,
        target: str = "image",
        group: str = "none",
    ) -> list[Hit]:
        """Search the index with one query.

        Args:
            text: a sentence.
            image: an image file path, its bytes, a PIL image or an H×W×3 uint8 array (feature models: also a
                K×D feature array; images where the index records its features' extractor, see
                :meth:`embed_images`).
            item: the id of an indexed item ("search with this result"); the item itself is left out.
            k: results per page.
            offset: results skipped (pagination).
            target: ``"image"`` or ``"text"``: which items to return.
            group: ``"image"`` with ``target="text"``: captions one per image, ``k`` and ``offset`` counting images
                (:mod:`vsekit.index.grouped`); ``"none"``: every result on its own.

        Returns:
            Up to ``k`` :class:`Hit` objects, best first (:class:`ImageGroup` objects when grouped).

        Raises:
            DataError: for no query or several, an empty text, an unreadable image or an unknown item.
            ConfigError: for an invalid ``k``, ``offset`` or ``target``.
        """
        given = [name for name, v in (("text", text), ("image", image), ("item", item)) if v is not None]
        if len(given) != 1:
            raise DataError(f"search: give exactly one of text, image or item (got {', '.join(given) or 'none'})")
        k, offset, target = self._check_query(k, offset, target)
        if group not in GROUPS:
            raise ConfigError(f"group: expected one of {', '.join(GROUPS)}, got {group!r}")
        if group == "image" and target == "text":
            return search_grouped(self, k, offset, text=text, image=image, item=item)[0]
        exclude = None
        if text is not None:
            if not isinstance(text, str):
                raise DataError(f"text: expected a string, got {type(text).__name__}")
            q, qmod = self.embed_texts([text]), "text"
        elif image is not None:
            q, qmod = self.embed_images([image]), "image"
        else:
            qmod, r = self._locate(item)  # type: ignore[arg-type]
            q = self._parts[qmod].exact.row(r)[None]
            exclude = [r] if qmod == target else None
        return self._rank(q, qmod, k, offset, target, exclude)[0]

    def search_batch(
        self,
        texts: Sequence[str] | None = None,
        images: Sequence[Any] | None = None,
        k: int = 10,
        target: str = "image",
        offset: int = 0,
    ) -> list[list[Hit]]:
        """Search with many queries at once (one forward pass per batch, one backend call).

        Args:
            texts: sentences; or
            images: images (as in :meth:`search`).
            k: results per query.
            target: ``"image"`` or ``"text"``.
            offset: results skipped per query.

        Returns:
            One list of hits per query, in query order.
        """
        if (texts is None) == (images is None):
            raise DataError("search_batch: give exactly one of texts or images")
        k, offset, target = self._check_query(k, offset, target)
        if texts is not None:
            if isinstance(texts, str):
                raise DataError("texts: expected a list of strings, got a single string")
            q, qmod = self.embed_texts(list(texts)), "text"
        else:
            q, qmod = self.embed_images(list(images)), "image"  # type: ignore[arg-type]
        if len(q) == 0:
            return []
        return self._rank(q, qmod, k, offset, target, None)

    # -- description -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """What the index holds: counts, dim, backend, model, collection, build time, recall@10."""
        meta = self.meta
        recall = {m: meta["parts"][m]["recall"]["recall_at_10"] for m in MODALITIES if meta["parts"][m].get("recall")}
        return {
            "path": str(self.path),
            "num_images": self._parts["image"].count,
            "num_texts": self._parts["text"].count,
            "dim": int(meta["dim"]),
            "backend": meta["backend"],
            "search_params": {m: meta["parts"][m].get("search_params") for m in MODALITIES if meta["parts"][m].get("faiss")},
            "model": {
                "name": meta["model"].get("name", ""),
                "checkpoint": meta["model"]["checkpoint"],
                "sha256": meta["model"]["sha256"],
                "similarity": meta["model"]["similarity"],
                "image": meta["model"]["image"],
                "text": meta["model"]["text"],
            },
            "root": str(self.root),
            "source": meta["collection"]["source"],
            "source_kind": meta["collection"]["kind"],
            "views": list(meta["collection"].get("views") or []),
            "built_at": meta["built_at"],
            "recall_at_10": recall,
            "skipped": len(meta.get("skipped", [])),
            "timing": meta.get("timing", {}),
        }
