"""The search index of a collection: build it (incrementally), load it, search it.

>>> from vsekit.index import Index
>>> idx = Index.build("runs/photos/best.pt", "~/Pictures", "photos.index")   # doctest: +SKIP
>>> for hit in idx.search(text="a dog on a beach", k=5):                     # doctest: +SKIP
...     print(hit.rank, f"{hit.score:.3f}", hit.path)

The files of an index, their format and how a build replaces them: :mod:`vsekit.index.store`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vsekit.device import resolve_device
from vsekit.errors import CheckpointError, ConfigError, DataError
from vsekit.evaluation import mean_over_views
from vsekit.index.backends import FaissBackend, import_faiss, measure_recall, parse_backend
from vsekit.index.collection import ImageItem, TextItem, detect_source_kind, read_collection
from vsekit.index.encode import check_image_input, encode_images, encode_texts
from vsekit.index.pending import PendingEmbeddings
from vsekit.index.store import (
    FORMAT,
    MODALITIES,
    PENDING,
    VERSION,
    IndexPart,
    commit_index,
    open_out_dir,
    open_part,
    open_shards,
    read_index_json,
    require_pyarrow,
    sha256_file,
    write_part,
)
from vsekit.progress import Progress

__all__ = ["FORMAT", "VERSION", "Hit", "Index"]

log = logging.getLogger("vsekit.index")

MAX_QUERY_PIXELS = 40_000_000
"""Largest query image given as bytes (width × height), checked from its header before it is decoded."""


@dataclass
class Hit:
    """One search result.

    Attributes:
        rank: 1-based position in the full ranking (pagination offset included).
        score: the similarity (cosine for normalised embeddings; ``-||max(0, t - i)||`` for order models).
        id: the item id.
        modality: ``"image"`` or ``"text"``.
        path: the image file relative to the collection root (for a text: its image's file), or None.
        caption: the text (for an image: its first caption), or None.
    """

    rank: int
    score: float
    id: str
    modality: str
    path: str | None
    caption: str | None

    def to_dict(self) -> dict[str, Any]:
        """The hit as a JSON-ready dict."""
        return asdict(self)


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _extractor_settings(kind: str, source: Path, features: str | os.PathLike | None) -> dict[str, Any] | None:
    """What made a feature collection's features (the ``features.json`` that ``vsekit extract`` writes next to
    them: backbone, image size, dtype, preprocessing), so that query images get the same features; None for
    other collections and for feature folders without it."""
    from vsekit.extract import FORMAT as FEATURES_FORMAT
    from vsekit.extract import META as FEATURES_META

    folder = Path(features) if features is not None else source if kind == "precomp" else None
    if folder is None or not (folder / FEATURES_META).is_file():
        return None
    try:
        meta = json.loads((folder / FEATURES_META).read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable; query images cannot be turned into features", folder / FEATURES_META)
        return None
    if not isinstance(meta, dict) or meta.get("format") != FEATURES_FORMAT:
        return None
    return {k: meta.get(k) for k in ("format", "backbone", "image_size", "dtype", "preprocessing")}


def _model_summary(model: Any, name: str, checkpoint: Path, sha: str, given: str) -> dict[str, Any]:
    cfg = model.config
    image = {"kind": cfg.image.kind, "pooling": cfg.image.pooling}
    if cfg.image.kind in ("precomp",) or model.image_input.kind == "features":
        image["img_dim"] = cfg.image.img_dim
    else:
        image.update(backbone=cfg.image.backbone, image_size=cfg.image.image_size)
    return {
        "name": name,
        "checkpoint": str(checkpoint),
        "given": given,
        "sha256": sha,
        "size": checkpoint.stat().st_size,
        "embed_size": cfg.embed_size,
        "similarity": cfg.similarity,
        "image": image,
        "text": {"kind": cfg.text.kind, "pooling": cfg.text.pooling},
        "vocab_size": len(model.tokenizer),
    }


# -- building ----------------------------------------------------------------------------------------


def _image_columns(items: list[ImageItem], first_caption: dict[str, str]) -> dict[str, list[Any]]:
    return {
        "id": [it.id for it in items],
        "path": [it.path for it in items],
        "caption": [first_caption.get(it.id) for it in items],
        "image_id": [None] * len(items),
        "size": [it.size for it in items],
        "mtime": [it.mtime for it in items],
        "key": [it.key for it in items],
    }


def _text_columns(items: list[TextItem], image_paths: dict[str, str | None]) -> dict[str, list[Any]]:
    return {
        "id": [t.id for t in items],
        "path": [image_paths.get(t.image_id) if t.image_id else None for t in items],
        "caption": [t.caption for t in items],
        "image_id": [t.image_id for t in items],
        "size": [None] * len(items),
        "mtime": [None] * len(items),
        "key": [t.key for t in items],
    }


class Index:
    """A searchable index of a collection's image and text embeddings (see the module docstring).

    Create one with :meth:`build` or open one with :meth:`load`.

    Attributes:
        path: the index folder.
        root: the collection root (image paths are relative to it).
        model: the :class:`vsekit.models.VSEModel` that embeds queries.
    """

    def __init__(self, path: Path, meta: dict[str, Any], model: Any, parts: dict[str, IndexPart]) -> None:
        self.path = path
        self.meta = meta
        self.model = model
        self.root = Path(meta["collection"]["root"])
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
    def load(cls, path: str | os.PathLike, device: str = "cpu", *, checkpoint: str | os.PathLike | None = None) -> Index:
        """Open an index folder: embeddings memory-mapped, metadata read, the model loaded once.

        Args:
            path: the index folder (written by :meth:`build` / ``vsekit encode``).
            device: where the model runs (``cpu``, ``cuda``, ``auto``).
            checkpoint: the model's checkpoint if it moved since the build (it must be the same file:
                its SHA-256 is checked).

        Raises:
            DataError: if the folder is not a readable index.
            CheckpointError: if the checkpoint is missing or is not the one the index was built with.
        """
        folder = Path(path)
        meta = read_index_json(folder)
        ckpt = Path(checkpoint) if checkpoint is not None else Path(meta["model"]["checkpoint"])
        if ckpt.is_dir():
            from vsekit.checkpoint import read_checkpoint

            ckpt = Path(read_checkpoint(ckpt)["path"])
        if not ckpt.is_file():
            raise CheckpointError(
                f"{ckpt}: the checkpoint of index {folder} is not there (pass checkpoint= / --checkpoint with its new place)"
            )
        sha = sha256_file(ckpt)
        if sha != meta["model"]["sha256"]:
            raise CheckpointError(
                f"{ckpt}: not the checkpoint index {folder} was built with (sha256 {sha[:12]}… != "
                f"{meta['model']['sha256'][:12]}…); re-run 'vsekit encode' with this checkpoint"
            )
        from vsekit.checkpoint import load as load_model

        return cls._open(folder, meta, load_model(ckpt, device))

    @classmethod
    def _open(cls, folder: Path, meta: dict[str, Any], model: Any) -> Index:
        if int(model.config.embed_size) != int(meta["dim"]):
            raise CheckpointError(f"{folder}: the index holds {meta['dim']}-d embeddings, the model makes {model.config.embed_size}-d")
        parts = {m: open_part(folder, meta, m) for m in MODALITIES}
        return cls(folder, meta, model, parts)

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
            checkpoint_every: new embeddings are flushed to ``pending/`` every this many items.

        Returns:
            The loaded :class:`Index`.

        Raises:
            ConfigError: for an invalid option, or a model that cannot read this kind of source.
            DataError: for a missing or malformed source, or an ``out_dir`` that is not an index.
            CheckpointError: for an unreadable checkpoint.
        """
        start = time.perf_counter()
        kind, factory = parse_backend(backend)
        batch_size = _positive_int(batch_size, "batch_size")
        shard_size = _positive_int(shard_size, "shard_size")
        workers = _positive_int(workers, "workers")
        recall_queries = _positive_int(recall_queries, "recall_queries")
        checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
        require_pyarrow()
        if kind == "faiss":
            import_faiss()
        stream = sys.stderr if progress else None

        from vsekit.checkpoint import model_from_checkpoint, read_checkpoint

        ckpt = read_checkpoint(checkpoint)
        ckpt_path = Path(ckpt["path"]).resolve()
        sha = sha256_file(ckpt_path)
        model = model_from_checkpoint(ckpt).to(resolve_device(device)).eval()
        stored = ckpt["config"] if isinstance(ckpt.get("config"), dict) else {}
        run_name = str(stored.get("name", ""))
        data_cfg = stored.get("data") if isinstance(stored.get("data"), dict) else {}
        del ckpt
        dim = int(model.config.embed_size)
        if kind == "faiss" and model.config.similarity != "cosine":
            raise ConfigError(
                f"backend: FAISS indexes score by inner product; this model uses model.similarity="
                f"{model.config.similarity!r}: use backend=exact"
            )
        if views is None:  # the views evaluation averaged over, where the source has features to take them from
            src = Path(source).absolute()
            feature_source = features is not None or (
                (source_kind if source_kind != "auto" else detect_source_kind(src)) == "precomp"
            )
            views = list(data_cfg.get("eval_views") or []) if feature_source else []
        col = read_collection(source, source_kind, image_root=image_root, split=split, features=features, views=tuple(views))
        check_image_input(model, col)

        out = Path(out_dir).absolute()
        old = open_out_dir(out)
        reuse: dict[str, dict[str, tuple[int, int]]] = {m: {} for m in MODALITIES}
        arrays: list[np.ndarray] = []
        old_parts: dict[str, IndexPart] = {}
        if old is not None and old["model"].get("sha256") == sha and int(old["dim"]) == dim:
            for m in MODALITIES:
                try:
                    part = open_part(out, old, m, faiss=False)
                except DataError as e:  # a damaged previous index: everything is embedded again
                    log.warning("previous %s embeddings unreadable, re-embedding them: %s", m, e)
                    continue
                old_parts[m] = part
                for s, shard in enumerate(part.shards):
                    a = len(arrays)
                    arrays.append(shard)
                    base = sum(len(x) for x in part.shards[:s])
                    for r in range(len(shard)):
                        reuse[m][part.columns["key"][base + r]] = (a, r)
        elif old is not None:
            log.warning("%s: built with another model; every item is embedded again", out)

        pending = PendingEmbeddings(out / PENDING, sha, dim, checkpoint_every)
        offset = len(arrays)  # pending arrays (earlier and new) are numbered from here
        for m in MODALITIES:
            for key, (a, r) in pending.found[m].items():
                reuse[m].setdefault(key, (offset + a, r))

        # -- embed what is new ------------------------------------------------------------------------
        skipped = list(col.skipped)
        failed: set[str] = set()
        timing: dict[str, Any] = {"device": str(model.device), "batch_size": batch_size}
        new_images = [it for it in col.images if it.key not in reuse["image"]]
        new_texts = [t for t in col.texts if t.key not in reuse["text"]]
        if new_images:
            bar = Progress(len(new_images), "encode images", unit="images", stream=stream)
            for items, emb, bad in encode_images(model, col, new_images, batch_size, workers, bar):
                pending.add("image", [it.key for it in items], emb)
                skipped.extend(bad)
                failed.update(b["path"] for b in bad)
            pending.flush("image")
            bar.close()
            timing["images_seconds"] = round(time.perf_counter() - bar.start, 3)
            timing["images_per_second"] = round(len(new_images) / max(timing["images_seconds"], 1e-9), 2)
        if new_texts:
            bar = Progress(len(new_texts), "encode texts", unit="texts", stream=stream)
            for items_t, emb in encode_texts(model, new_texts, batch_size, bar):
                pending.add("text", [t.key for t in items_t], emb)
            pending.flush("text")
            bar.close()
            timing["texts_seconds"] = round(time.perf_counter() - bar.start, 3)
            timing["texts_per_second"] = round(len(new_texts) / max(timing["texts_seconds"], 1e-9), 2)
        arrays.extend(pending.arrays)
        for m in MODALITIES:
            for key, (a, r) in pending.found[m].items():
                reuse[m].setdefault(key, (offset + a, r))

        # -- assemble the new generation -------------------------------------------------------------
        images = [it for it in col.images if it.key in reuse["image"]]
        indexed = {it.id for it in images}
        texts = list(col.texts)
        columns = {
            "image": _image_columns(images, col.first_captions()),
            "text": _text_columns(texts, {it.id: it.path for it in images}),
        }
        for t_row, t in enumerate(texts):  # a caption of an image that could not be read keeps no image link
            if t.image_id is not None and t.image_id not in indexed:
                columns["text"]["path"][t_row] = None
        generation = int(old.get("generation", 0)) + 1 if old else 1
        parts_meta: dict[str, dict[str, Any]] = {}
        for m in MODALITIES:
            cols = columns[m]
            prev = old_parts.get(m)
            same_backend = old is not None and old["backend"] == backend and old.get("search_params") == search_params
            if prev is not None and same_backend and prev.columns == cols:
                parts_meta[m] = dict(old["parts"][m])  # unchanged: keep the previous generation's files
                continue
            parts_meta[m] = write_part(
                out, m, generation, cols, reuse[m], arrays, dim, shard_size, factory, search_params
            )
        for m, other in (("image", "text"), ("text", "image")):
            entry = parts_meta[m]
            if entry.get("faiss") and entry.get("recall") is None:
                shards = open_shards(out, entry, dim)
                other_shards = open_shards(out, parts_meta[other], dim) if parts_meta[other]["count"] else []
                fb = FaissBackend.load(out / entry["faiss"], factory or "", entry.get("search_params") or "")
                entry["recall"] = measure_recall(shards, other_shards, fb, dim, recall_queries)

        old_keys = {m: set(old_parts[m].columns["key"]) if m in old_parts else set() for m in MODALITIES}
        encoded = {"images": len(new_images) - len(failed), "texts": len(new_texts)}
        reused_counts = {"images": len(images) - encoded["images"], "texts": len(texts) - encoded["texts"]}
        timing["seconds"] = round(time.perf_counter() - start, 3)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "generation": generation,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": _model_summary(model, run_name, ckpt_path, sha, str(checkpoint)),
            "collection": {
                "root": str(col.root),
                "source": str(col.source),
                "kind": col.kind,
                "image_root": None if image_root is None else str(Path(image_root).absolute()),
                "split": split,
                "features": None if features is None else str(Path(features).absolute()),
                "views": list(col.views),
                "extractor": _extractor_settings(col.kind, col.source, features),
            },
            "backend": backend,
            "search_params": search_params,
            "dim": dim,
            "dtype": "float32",
            "parts": parts_meta,
            "counts": {"images": len(images), "texts": len(texts)},
            "encoded": encoded,
            "reused": reused_counts,
            "removed": {
                "images": len(old_keys["image"] - set(columns["image"]["key"])),
                "texts": len(old_keys["text"] - set(columns["text"]["key"])),
            },
            "skipped": skipped,
            "timing": timing,
        }
        commit_index(out, meta)
        del arrays, reuse, old_parts
        if stream is not None:
            rates = []
            if "images_per_second" in timing:
                rates.append(f"{timing['images_per_second']:.1f} images/s")
            if "texts_per_second" in timing:
                rates.append(f"{timing['texts_per_second']:.1f} texts/s")
            recall = [f"{m} recall@10 {parts_meta[m]['recall']['recall_at_10']:.3f}" for m in MODALITIES
                      if parts_meta[m].get("recall")]  # fmt: skip
            print(
                f"index {out}: {len(images)} images, {len(texts)} texts; embedded {encoded['images']} images and "
                f"{encoded['texts']} texts" + (f" ({', '.join(rates)})" if rates else "")
                + f", reused {reused_counts['images'] + reused_counts['texts']}, skipped {len(skipped)}"
                + (f"; {', '.join(recall)}" if recall else "") + f"; {timing['seconds']:.1f}s",
                file=stream,
            )  # fmt: skip
        log.info("index %s built in %.1fs: %s", out, timing["seconds"], timing)
        return cls._open(out, meta, model)

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
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"text: expected a non-empty query string (query {i})")
        return self.model.encode_text([t.strip() for t in texts]).numpy()

    def _decode_image(self, image: Any) -> Any:
        """A query image as the model input accepts it: bytes decoded (size-checked first), paths, PIL images
        and arrays as they are."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            try:
                from PIL import Image

                with Image.open(io.BytesIO(bytes(image))) as im:
                    if im.width * im.height > MAX_QUERY_PIXELS:  # checked before decoding: a small file can
                        raise DataError(  # expand to gigabytes of pixels
                            f"image: {im.width}×{im.height} pixels is too large for a query image "
                            f"(at most {MAX_QUERY_PIXELS:,} pixels)"
                        )
                    return np.array(im.convert("RGB"), dtype=np.uint8)
            except DataError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to decode the given bytes is a data error
                first = (str(e).splitlines() or [type(e).__name__])[0][:200]
                raise DataError(f"image: not a readable image ({first})") from None
        if isinstance(image, (str, os.PathLike, np.ndarray)) or type(image).__module__.startswith("PIL."):
            return image
        raise DataError(f"image: expected a file path, bytes, a PIL image or an H×W×3 uint8 array, got {type(image).__name__}")

    def feature_extractor(self) -> Any:
        """The :class:`vsekit.extract.FeatureExtractor` that made this feature index's features, on the model's
        device (built on first use), or None where the index does not record one (other models; feature
        folders without ``features.json``)."""
        settings = self.meta["collection"].get("extractor")
        if settings is None or self.model.image_input.kind != "features":
            return None
        with self._extractor_lock:
            if self._extractor is None:
                from vsekit.extract import FeatureExtractor

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
        if self.model.image_input.kind != "features":
            return self.model.encode_image([self._decode_image(x) for x in images]).numpy()
        out = np.zeros((len(images), int(self.model.config.embed_size)), np.float32)
        arrays = {i: x for i, x in enumerate(images) if isinstance(x, (np.ndarray, torch.Tensor)) and np.ndim(x) in (1, 2)}
        if arrays:
            feats = [np.asarray(x, dtype=np.float32) for x in arrays.values()]
            out[list(arrays)] = self.model.encode_image([f[None] if f.ndim == 1 else f for f in feats]).numpy()
        pictures = {i: self._decode_image(x) for i, x in enumerate(images) if i not in arrays}
        if pictures:
            extractor = self.feature_extractor()
            if extractor is None:
                raise DataError(
                    "image: this index's model reads precomputed features, and the index does not record how they "
                    "were made (no features.json from 'vsekit extract' beside them, or an index built before vsekit "
                    "recorded it: run its 'vsekit encode' again); give a K×D feature array, or search by item"
                )
            views = (None, *(self.meta["collection"].get("views") or []))
            grids = extractor(list(pictures.values()), views)
            embs = [self.model.encode_image(g) for g in grids]
            out[list(pictures)] = mean_over_views(embs, self.model.config.image.normalize).numpy()
        return out

    def _check_query(self, k: Any, offset: Any, target: Any) -> tuple[int, int, str]:
        k = _positive_int(k, "k")
        offset = _positive_int(offset, "offset", minimum=0)
        if target not in MODALITIES:
            raise ConfigError(f"target: expected 'image' or 'text', got {target!r}")
        if self._parts[target].count == 0:
            raise DataError(f"target: index {self.path} holds no {target}s")
        return k, offset, target

    def _rank(self, q: np.ndarray, qmod: str, k: int, offset: int, target: str, exclude: list[int] | None) -> list[list[Hit]]:
        part = self._parts[target]
        if qmod == target or self.model.config.similarity == "cosine":
            score, backend = "dot", part.backend
        else:
            score, backend = ("order_query_text" if qmod == "text" else "order_query_image"), part.exact
        want = k + offset + (1 if exclude is not None else 0)
        scores, rows = backend.search(q, want, score)
        cols = part.columns
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

        Returns:
            Up to ``k`` :class:`Hit` objects, best first.

        Raises:
            DataError: for no query or several, an empty text, an unreadable image or an unknown item.
            ConfigError: for an invalid ``k``, ``offset`` or ``target``.
        """
        given = [name for name, v in (("text", text), ("image", image), ("item", item)) if v is not None]
        if len(given) != 1:
            raise DataError(f"search: give exactly one of text, image or item (got {', '.join(given) or 'none'})")
        k, offset, target = self._check_query(k, offset, target)
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
