"""Building an index: embed a collection into an index folder, or bring the index there up to date.

:func:`build_index` (behind :meth:`vsekit.index.Index.build`) reads the collection (the reader,
:mod:`vsekit.index.collection`), embeds the items that no stored embedding has (the mapper,
:mod:`vsekit.index.encode`; what it embeds is kept in :mod:`vsekit.index.pending` as it comes), writes a new
generation of the parts that changed and commits ``index.json`` (the writer, :mod:`vsekit.index.store`).

Incremental: an item's embedding is reused, by its key (see :mod:`vsekit.index.collection`), from the previous
index when it was built with the same checkpoint (same sha256) and dimension, and from the ``pending/`` folder
of a build that was killed; a part whose rows did not change keeps its files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from vsekit.device import resolve_device
from vsekit.distributed import DistContext, barrier, broadcast_object, gather_objects, init_from_env, shutdown
from vsekit.errors import ConfigError, DataError
from vsekit.index.backends import FaissBackend, import_faiss, measure_recall, parse_backend
from vsekit.index.budget import AUTO, AutoSettings, auto_settings, same_budget
from vsekit.index.collection import Collection, ImageItem, TextItem, detect_source_kind, read_collection
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
    require_pyarrow,
    sha256_file,
    write_part,
)
from vsekit.index.summary import ModelSource, collection_summary, item_counts, model_summary, summary_line
from vsekit.progress import Progress

__all__ = [
    "BuildOptions", "build_index", "embed_new_items", "items_to_embed", "load_model", "measure_recalls", "new_columns",
    "open_pending", "photo_extractor", "photo_extractor_settings", "positive_int", "rank_share", "read_pending", "read_source", "reusable_parts", "stored_embeddings", "write_generation",
]  # fmt: skip

log = logging.getLogger("vsekit.index")

Rows = dict[str, dict[str, tuple[int, int]]]
"""``{modality: {item key: (number of an array, row)}}``: where each stored embedding is."""


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int, or a :class:`ConfigError` naming the option if it is not an integer >= ``minimum``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass
class BuildOptions:
    """The options of :meth:`vsekit.index.Index.build` (described there), checked when made.

    Attributes:
        factory: besides the options, the FAISS factory string of a ``faiss:`` backend (None for ``exact``;
            ``"auto"`` for ``faiss:auto``).
        auto: the checked ``max_index_memory`` (bytes), ``min_recall`` and ``recall_queries`` of ``faiss:auto``
            (:class:`vsekit.index.budget.AutoSettings`; None for other backends).

    Raises:
        ConfigError: for an unknown backend, a count that is not a positive integer, a bad size or recall, a
            budget or recall given to another backend than ``faiss:auto``, or search parameters given to it.
    """

    source_kind: str
    backend: str
    batch_size: int
    device: str
    progress: bool
    image_root: str | os.PathLike | None
    split: str | None
    features: str | os.PathLike | None
    views: Sequence[str] | None
    search_params: str | None
    shard_size: int
    workers: int
    recall_queries: int
    checkpoint_every: int
    checkpoint_seconds: float
    max_index_memory: int | str | None = None
    min_recall: float | None = None
    factory: str | None = field(init=False)
    auto: AutoSettings | None = field(init=False)

    def __post_init__(self) -> None:
        self.factory = parse_backend(self.backend)[1]
        for name in ("batch_size", "shard_size", "workers", "recall_queries", "checkpoint_every"):
            setattr(self, name, positive_int(getattr(self, name), name))
        seconds = self.checkpoint_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
            raise ConfigError(f"checkpoint_seconds: expected a number of seconds >= 0, got {seconds!r}")
        self.auto = None
        if self.factory == AUTO:
            if self.search_params is not None:
                raise ConfigError("search_params: faiss:auto chooses them (nprobe and rerank); leave search_params unset")
            self.auto = auto_settings(self.max_index_memory, self.min_recall, self.recall_queries)
        elif self.max_index_memory is not None or self.min_recall is not None:
            name = "max_index_memory" if self.max_index_memory is not None else "min_recall"
            raise ConfigError(f"{name}: only backend=faiss:auto chooses an index from a budget (backend is {self.backend!r})")


def load_model(checkpoint: str | os.PathLike, options: BuildOptions, device: Any = None) -> tuple[Any, ModelSource]:
    """The model of a checkpoint, in eval mode on ``device`` (default: the build's), and where it comes from.

    Raises:
        ConfigError: for a FAISS backend with a model that does not score by cosine.
    """
    from vsekit.checkpoint import model_from_checkpoint, read_checkpoint, recorded_extractor

    ckpt = read_checkpoint(checkpoint)
    path = Path(ckpt["path"]).resolve()
    sha = sha256_file(Path(ckpt.get("weights_path", path)))  # a model folder: its weights file
    model = model_from_checkpoint(ckpt).to(device if device is not None else resolve_device(options.device)).eval()
    stored = ckpt["config"] if isinstance(ckpt.get("config"), dict) else {}
    data_cfg = stored.get("data") if isinstance(stored.get("data"), dict) else {}
    extractor = recorded_extractor(ckpt) if model.image_input.kind == "features" else None
    source = ModelSource(path, sha, str(checkpoint), str(stored.get("name", "")), data_cfg.get("eval_views"), extractor)
    if options.factory is not None and model.config.similarity != "cosine":
        raise ConfigError(
            f"backend: FAISS indexes score by inner product; this model uses model.similarity="
            f"{model.config.similarity!r}: use backend=exact"
        )
    return model, source


def read_source(
    source: str | os.PathLike, options: BuildOptions, model: Any, eval_views: Any, extractor: dict[str, Any] | None = None
) -> Collection:
    """The collection to index, checked against what the model reads. Unless ``options.views`` says, a
    feature source is embedded over the views evaluation averaged over (``eval_views``), and so are the photos
    that a feature model turns into features with its recorded ``extractor`` (their keys then name the views, so
    that another choice of views embeds them again)."""
    src = Path(source).absolute()
    kind = options.source_kind
    feature_source = options.features is not None or (kind if kind != "auto" else detect_source_kind(src)) == "precomp"
    views = options.views
    if views is None:  # the views evaluation averaged over, where features are read or made
        views = list(eval_views or []) if feature_source or extractor is not None else []
    photo_views = tuple(views) if extractor is not None and not feature_source else ()
    col = read_collection(
        source, options.source_kind, image_root=options.image_root, split=options.split, features=options.features,
        views=() if photo_views else tuple(views),
    )  # fmt: skip
    if photo_views:
        col.views = photo_views
        col.images = [dataclasses.replace(it, key=f"{it.key}|views={','.join(photo_views)}") for it in col.images]
    check_image_input(model, col, extractor is not None)
    return col


def reusable_parts(out: Path, old: dict[str, Any] | None, sha: str, dim: int) -> dict[str, IndexPart]:
    """The readable parts of the previous index, if it was built with the same checkpoint and dimension:
    their embeddings are reused."""
    parts: dict[str, IndexPart] = {}
    if old is not None and old["model"].get("sha256") == sha and int(old["dim"]) == dim:
        for m in MODALITIES:
            try:
                parts[m] = open_part(out, old, m, faiss=False)
            except DataError as e:  # a damaged previous index: everything is embedded again
                log.warning("previous %s embeddings unreadable, re-embedding them: %s", m, e)
    elif old is not None:
        log.warning("%s: built with another model; every item is embedded again", out)
    return parts


def items_to_embed(
    col: Collection, previous: dict[str, IndexPart], pending: PendingEmbeddings
) -> tuple[list[ImageItem], list[TextItem]]:
    """The images and texts whose key neither the previous index nor ``pending/`` holds."""
    known = {m: set(pending.found[m]).union(previous[m].columns["key"] if m in previous else ()) for m in MODALITIES}
    return [it for it in col.images if it.key not in known["image"]], [t for t in col.texts if t.key not in known["text"]]


def _record_speed(timing: dict[str, Any], what: str, count: int, bar: Progress) -> None:
    timing[f"{what}_seconds"] = round(time.perf_counter() - bar.start, 3)
    timing[f"{what}_per_second"] = round(count / max(timing[f"{what}_seconds"], 1e-9), 2)


def embed_new_items(
    model: Any,
    col: Collection,
    new: tuple[list[ImageItem], list[TextItem]],
    pending: PendingEmbeddings,
    options: BuildOptions,
    stream: TextIO | None,
    extractor: Any = None,
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Embed the new images and texts into ``pending``, with a progress bar each (``extractor``: what turns photos
    into a feature model's features, see :func:`vsekit.index.encode.encode_images`).

    Returns:
        The ``{"path", "reason"}`` of the images that could not be read, and the timing of the build so far.
    """
    images, texts = new
    skipped: list[dict[str, str]] = []
    timing: dict[str, Any] = {"device": str(model.device), "batch_size": options.batch_size}
    if images:
        bar = Progress(len(images), "encode images", unit="images", stream=stream)
        for items, emb, bad in encode_images(model, col, images, options.batch_size, options.workers, bar, extractor):
            pending.add("image", [it.key for it in items], emb)
            skipped.extend(bad)
        pending.flush("image")
        bar.close()
        _record_speed(timing, "images", len(images), bar)
    if texts:
        bar = Progress(len(texts), "encode texts", unit="texts", stream=stream)
        for items_t, emb in encode_texts(model, texts, options.batch_size, bar):
            pending.add("text", [t.key for t in items_t], emb)
        pending.flush("text")
        bar.close()
        _record_speed(timing, "texts", len(texts), bar)
    return skipped, timing


def stored_embeddings(previous: dict[str, IndexPart], pending: PendingEmbeddings) -> tuple[list[Any], Rows]:
    """Every embedding a build holds, as arrays on disk and where each key's row is: the previous index's
    memory-mapped shards first (they win for a key held twice), then the files of ``pending``."""
    arrays: list[Any] = []
    rows: Rows = {m: {} for m in MODALITIES}
    for m, part in previous.items():
        keys = iter(part.columns["key"])
        for shard in part.shards:
            rows[m].update((next(keys), (len(arrays), r)) for r in range(len(shard)))
            arrays.append(shard)
    offset = len(arrays)
    arrays.extend(pending.arrays)
    for m in MODALITIES:
        for key, (a, r) in pending.found[m].items():
            rows[m].setdefault(key, (offset + a, r))
    return arrays, rows


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


def new_columns(col: Collection, rows: Rows) -> dict[str, dict[str, list[Any]]]:
    """The metadata columns of each part: the images that have an embedding and every text. A caption of an
    image that could not be read keeps no path (the image is not indexed)."""
    images = [it for it in col.images if it.key in rows["image"]]
    return {
        "image": _image_columns(images, col.first_captions()),
        "text": _text_columns(list(col.texts), {it.id: it.path for it in images}),
    }


def write_generation(
    out: Path,
    old: dict[str, Any] | None,
    previous: dict[str, IndexPart],
    columns: dict[str, dict[str, list[Any]]],
    embeddings: tuple[list[Any], Rows],
    dim: int,
    options: BuildOptions,
) -> tuple[int, dict[str, dict[str, Any]]]:
    """Write the parts whose rows or backend changed into a new generation folder (the others keep the
    previous generation's files); returns the generation and the ``parts`` entry of index.json."""
    arrays, rows = embeddings
    generation = int(old.get("generation", 0)) + 1 if old else 1
    same_backend = old is not None and old["backend"] == options.backend and old.get("search_params") == options.search_params
    parts: dict[str, dict[str, Any]] = {}
    for m in MODALITIES:
        prev = previous.get(m)
        budget_kept = options.auto is None or (old is not None and same_budget(old["parts"][m], options.auto))
        if old is not None and prev is not None and same_backend and budget_kept and prev.columns == columns[m]:
            parts[m] = dict(old["parts"][m])  # unchanged: keep the previous generation's files
            continue
        parts[m] = write_part(
            out, m, generation, columns[m], rows[m], arrays, dim, options.shard_size, options.factory, options.search_params,
            options.auto,
        )
    return generation, parts


def measure_recalls(out: Path, parts: dict[str, dict[str, Any]], dim: int, options: BuildOptions) -> None:
    """Store the recall@10 of every FAISS part written by this build (see :func:`measure_recall`)."""
    for m, other in (("image", "text"), ("text", "image")):
        entry = parts[m]
        if entry.get("faiss") and entry.get("recall") is None:
            shards = open_shards(out, entry, dim)
            other_shards = open_shards(out, parts[other], dim) if parts[other]["count"] else []
            fb = FaissBackend.load(out / entry["faiss"], options.factory or "", entry.get("search_params") or "")
            entry["recall"] = measure_recall(shards, other_shards, fb, dim, options.recall_queries)


def photo_extractor_settings(model: Any, source: ModelSource, options: BuildOptions) -> dict[str, Any] | None:
    """The recorded extractor settings when this build may turn photos into the features a feature model reads (no
    ``--features`` folder given), else None."""
    if model.image_input.kind != "features" or options.features is not None:
        return None
    return source.extractor


def photo_extractor(col: Collection, source: ModelSource, device: Any) -> Any:
    """The :class:`vsekit.backbones.extractor.FeatureExtractor` of a feature model for a collection of image files, or None."""
    if col.features or source.extractor is None or not col.images:
        return None
    from vsekit.backbones.extractor import FeatureExtractor

    return FeatureExtractor.from_metadata(source.extractor, f"{source.given} (its recorded extractor)", device=str(device))


def rank_share(items: Sequence[Any], ctx: DistContext) -> list[Any]:
    """This process's contiguous share of ``items`` (shares differ by at most one item)."""
    n = len(items)
    return list(items[n * ctx.rank // ctx.world_size : n * (ctx.rank + 1) // ctx.world_size])


def open_pending(out: Path, sha: str, dim: int, options: BuildOptions, ctx: DistContext) -> PendingEmbeddings:
    """The ``pending/`` folder of this build: rank 0 opens it first (it may start it again for another model),
    then the other ranks read what it holds."""
    pending = read_pending(out, sha, dim, options) if ctx.is_main else None
    barrier()
    return pending if pending is not None else read_pending(out, sha, dim, options)


def read_pending(out: Path, sha: str, dim: int, options: BuildOptions) -> PendingEmbeddings:
    """The ``pending/`` folder of ``out`` with every chunk it holds (see :class:`PendingEmbeddings`)."""
    return PendingEmbeddings(out / PENDING, sha, dim, options.checkpoint_every, options.checkpoint_seconds)


def build_index(
    checkpoint: str | os.PathLike, source: str | os.PathLike, out_dir: str | os.PathLike, options: BuildOptions
) -> tuple[Path, dict[str, Any], Any]:
    """Embed a collection into an index folder, or bring the index there up to date (see the module docstring
    and :meth:`vsekit.index.Index.build`).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process embeds its contiguous share of the new items on its own
    device (``cuda:LOCAL_RANK``, or the CPU) into ``pending/``; once all are done, rank 0 writes the new
    generation from the pending embeddings and commits ``index.json``. A killed multi-process build resumes as a
    single-process one does, with any number of processes.

    Returns:
        The index folder (absolute), its committed index.json and the model.
    """
    start = time.perf_counter()
    require_pyarrow()
    if options.factory is not None:
        import_faiss()
    ctx, device, started = init_from_env(resolve_device(options.device))
    try:
        with contextlib.ExitStack() as held:  # rank 0 holds the folder from opening it to the commit
            return _build(checkpoint, source, Path(out_dir).absolute(), options, (ctx, device), start, held)
    finally:
        shutdown(started)


def _build(
    checkpoint: str | os.PathLike, source: str | os.PathLike, out: Path, options: BuildOptions,
    placement: tuple[DistContext, Any], start: float, held: contextlib.ExitStack,
) -> tuple[Path, dict[str, Any], Any]:  # fmt: skip
    ctx, device = placement
    stream = sys.stderr if options.progress and ctx.is_main else None
    model, model_source = load_model(checkpoint, options, device)
    dim = int(model.config.embed_size)
    col = read_source(source, options, model, model_source.eval_views, photo_extractor_settings(model, model_source, options))
    old = broadcast_object(open_out_dir(out, held) if ctx.is_main else None)
    previous = reusable_parts(out, old, model_source.sha256, dim)
    pending = open_pending(out, model_source.sha256, dim, options, ctx)
    new_images, new_texts = items_to_embed(col, previous, pending)
    share = (rank_share(new_images, ctx), rank_share(new_texts, ctx))
    extractor = photo_extractor(col, model_source, device) if share[0] else None
    unreadable, timing = embed_new_items(model, col, share, pending, options, stream, extractor)
    unreadable = [bad for part in gather_objects(unreadable) for bad in part]
    barrier()  # every process's embeddings are in pending/
    meta = None
    if ctx.is_main:
        if ctx.enabled:  # read back what the other processes embedded
            pending = read_pending(out, model_source.sha256, dim, options)
        timing["processes"] = ctx.world_size
        embeddings = stored_embeddings(previous, pending)
        columns = new_columns(col, embeddings[1])
        generation, parts = write_generation(out, old, previous, columns, embeddings, dim, options)
        del embeddings
        measure_recalls(out, parts, dim, options)
        timing["seconds"] = round(time.perf_counter() - start, 3)
        encoded = {"images": len(new_images) - len({b["path"] for b in unreadable}), "texts": len(new_texts)}
        meta = {
            "format": FORMAT, "version": VERSION, "generation": generation,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": model_summary(model, model_source),
            "collection": collection_summary(col, options.image_root, options.split, options.features, model_source.extractor),
            "backend": options.backend, "search_params": options.search_params, "dim": dim, "dtype": "float32",
            "parts": parts, **item_counts(previous, columns, encoded), "skipped": col.skipped + unreadable, "timing": timing,
        }  # fmt: skip
        commit_index(out, meta)
        if stream is not None:
            print(summary_line(out, meta), file=stream)
        log.info("index %s built in %.1fs: %s", out, timing["seconds"], timing)
    return out, broadcast_object(meta), model
