"""The state behind the routes: the index (loaded once), query statistics, the thumbnail cache, and the
image decoding of uploads and thumbnails."""

import io
import logging
import threading
import time
import unicodedata
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from vsekit.data.images import ImageTooLargeError, open_image
from vsekit.errors import DataError, VsekitError

from .errors import ApiError, shorten
from .model_name import describe_model
from .schemas import CaptionMatch, LatencyStats, QueryInfo, SearchHit, SearchResponse, ServiceLimits

log = logging.getLogger("vsekit.serving.app")

IMAGE_MEDIA_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".webp": "image/webp",
    ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
}  # fmt: skip
MAX_CAPTIONS = 10_000
"""Most captions of one image that an item's metadata lists."""


class ThumbnailCache:
    """A least-recently-used map of thumbnails, bounded by total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[str, int], data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"items": len(self._items), "bytes": self._bytes}


class SearchService:
    """The loaded index, its lock and the service counters."""

    def __init__(self, index: Any, device: str, limits: ServiceLimits) -> None:
        self.source = index
        self.device = device
        self.limits = limits
        self.index: Any = None if isinstance(index, (str, Path)) else index
        self.lock = threading.Lock()  # one query at a time through the model and the backend
        self.latencies: deque[float] = deque(maxlen=limits.latency_window)
        self.queries = 0
        self.errors = 0
        self.started = time.monotonic()
        self.thumbnails = ThumbnailCache(limits.thumbnail_cache_bytes)
        self._stats: dict[str, Any] | None = None
        self._model: dict[str, Any] | None = None

    def load(self) -> None:
        if self.index is None:
            from vsekit.index import Index

            t0 = time.perf_counter()
            self.index = Index.load(self.source, device=self.device)
            log.info("loaded the index %s in %.1fs", self.source, time.perf_counter() - t0)
        self.started = time.monotonic()

    def private_paths(self) -> list[str]:
        """Server-side folders that no answer may show: the index's, the collection's and the home folder."""
        folders = [str(self.source)] if isinstance(self.source, (str, Path)) else []
        if self.index is not None:
            folders += [str(getattr(self.index, name, "") or "") for name in ("path", "root")]
        folders += [str(Path(f).resolve()) for f in folders if f]
        return [f for f in (*folders, str(Path.home())) if Path(f).is_absolute()]  # a relative name is a word too

    def require(self) -> Any:
        if self.index is None:
            raise ApiError(503, "the index is not loaded yet (the app's lifespan has not started)")
        return self.index

    def index_stats(self) -> dict[str, Any]:
        """The index's statistics as served: file names only, never this machine's absolute paths."""
        if self._stats is None:  # the index does not change while served
            stats = dict(self.require().stats())
            for key in ("path", "root", "source"):
                if stats.get(key):
                    stats[key] = Path(str(stats[key])).name
            if isinstance(stats.get("model"), dict) and stats["model"].get("checkpoint"):
                stats["model"] = {**stats["model"], "checkpoint": Path(str(stats["model"]["checkpoint"])).name}
            self._stats = stats
        return self._stats

    def item_count(self) -> int:
        stats = self.index_stats()
        return int(stats.get("num_images", 0)) + int(stats.get("num_texts", 0))

    def record(self, seconds: float) -> None:
        with self.lock:
            self.latencies.append(seconds * 1000.0)
            self.queries += 1

    def latency(self) -> LatencyStats:
        import numpy as np

        with self.lock:
            values = np.asarray(self.latencies, dtype=np.float64)
        if not len(values):
            return LatencyStats(count=0, p50=None, p90=None, p99=None, mean=None)
        p50, p90, p99 = (round(float(x), 3) for x in np.percentile(values, [50, 90, 99]))
        return LatencyStats(count=len(values), p50=p50, p90=p90, p99=p99, mean=round(float(values.mean()), 3))

    def check_id(self, item_id: str, name: str = "item") -> str:
        if not item_id:
            raise ApiError(422, f"{name}: the id is empty")
        if len(item_id) > self.limits.max_id_chars:
            raise ApiError(422, f"{name}: the id has {len(item_id)} characters, more than {self.limits.max_id_chars}")
        if any(unicodedata.category(c) == "Cc" for c in item_id):
            raise ApiError(422, f"{name}: the id contains control characters")
        return item_id

    def item(self, item_id: str, name: str = "item") -> dict[str, Any]:
        """The index's record of an item; 404 when there is none."""
        self.check_id(item_id, name)
        try:
            record = self.require().item(item_id)
        except (KeyError, DataError):
            raise ApiError(404, f"{name}: no item with id {shorten(item_id, 80)} in the index") from None
        return dict(record)

    def file(self, item_id: str) -> Path:
        """The image file of an item, found through ``Index.resolve_path`` and checked to lie inside the
        collection root (symlinks resolved)."""
        record = self.item(item_id)
        index = self.require()
        if record.get("modality") != "image" or not record.get("path"):
            raise ApiError(404, f"item {shorten(item_id, 80)} is not an image with a file (see its image_id)")
        try:
            path = Path(index.resolve_path(item_id))
        except DataError as exc:  # its message names the collection's folder: answer without it
            if "outside" in str(exc) or "leaves" in str(exc):
                raise ApiError(403, f"item {shorten(item_id, 80)}: its file is outside the collection") from None
            raise ApiError(404, f"item {shorten(item_id, 80)}: its file is missing from the collection") from None
        root = Path(index.root).resolve()
        real = path.resolve()
        if not real.is_relative_to(root):  # resolve_path checks this too; never serve outside the root
            raise ApiError(403, f"item {shorten(item_id, 80)}: its file is outside the collection")
        if not real.is_file():
            raise ApiError(404, f"item {shorten(item_id, 80)}: its file is missing from the collection")
        return real


    def urls(self, record: dict[str, Any]) -> dict[str, str | None]:
        """The thumbnail and file URLs of an item's image: its own for an image, its image's for a
        caption (None when there is no file)."""
        if not record.get("path"):
            return {"thumbnail_url": None, "image_url": None}
        image_id = record["id"]
        if record.get("modality") == "text":
            image_id = record["image_id"] if "image_id" in record else self.require().item(record["id"]).get("image_id")
            if not image_id:
                return {"thumbnail_url": None, "image_url": None}
        base = "/api/items/" + quote(image_id, safe="/")
        return {"thumbnail_url": base + "/thumbnail", "image_url": base + "/image"}

    def timed(self, answer: Callable[[Any], Any]) -> tuple[Any, float]:
        """``answer(index)`` and the seconds it took, under the model's lock (timed inside: the query's own work,
        not the wait for a busy model); a refused query is a 400."""
        index = self.require()
        try:
            with self.lock:
                t0 = time.perf_counter()
                result = answer(index)
                return result, time.perf_counter() - t0
        except VsekitError as exc:
            raise ApiError(400, str(exc)) from None

    def ranked(self, query: dict[str, Any], k: int, offset: int, target: str) -> tuple[list[Any], float]:
        """The index's hits for ``query`` and the seconds they took (:meth:`timed`)."""
        return self.timed(lambda index: index.search(**query, k=k, offset=offset, target=target))

    def hit(self, d: dict[str, Any], **extra: Any) -> SearchHit:
        """A hit as the API answers it: a caption with the id of its image, both with their image's URLs."""
        if d.get("modality") == "text" and "image_id" not in d:
            d = {**d, "image_id": self.require().item(d["id"]).get("image_id")}
        return SearchHit(**d, **extra, **self.urls(d))

    def search(self, kind: str, k: int, offset: int, target: str, group: str = "none", **query: Any) -> SearchResponse:
        """One page of results, as the API answers it. ``group="image"`` with caption results: one result per image
        (see :meth:`grouped_captions`)."""
        info = QueryInfo(kind=kind, text=query.get("text"), item=query.get("item"), k=k, offset=offset, target=target, group=group)
        if group == "image" and target == "text":
            hits, has_more, took = self.grouped_captions(query, k, offset)
        else:
            found, took = self.ranked(query, k + 1, offset, target)
            hits, has_more = [self.hit(h.to_dict()) for h in found[:k]], len(found) > k
        self.record(took)
        return SearchResponse(query=info, hits=hits, has_more=has_more, took_ms=round(took * 1000.0, 3))

    def grouped_captions(self, query: dict[str, Any], k: int, offset: int) -> tuple[list[SearchHit], bool, float]:
        """Caption results grouped by image (:func:`vsekit.index.grouped.search_grouped`), as the API answers
        them, with the seconds they took (:meth:`timed`)."""
        from vsekit.index.grouped import search_grouped

        (groups, has_more), took = self.timed(lambda index: search_grouped(index, k, offset, **query))
        page = []
        for g in groups:
            matches = [CaptionMatch(id=h.id, caption=h.caption, score=h.score, rank=h.rank) for h in g.captions]
            hit = {f: getattr(g, f) for f in ("rank", "score", "id", "modality", "path", "caption", "image_id")}
            page.append(self.hit(hit, captions=matches))
        return page, has_more, took

    def captions_of(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The captions of an item's image, in index order (ids ``{image id}#{n}``, see
        :mod:`vsekit.index.collection`); a caption of no image has itself."""
        image_id = record["id"] if record.get("modality") == "image" else record.get("image_id")
        if not image_id:
            return [{"id": record["id"], "caption": record.get("caption")}] if record.get("modality") == "text" else []
        index, out = self.require(), []
        for n in range(MAX_CAPTIONS):
            try:
                caption = index.item(f"{image_id}#{n}")
            except (KeyError, DataError):
                break
            if caption.get("modality") != "text" or caption.get("image_id") != image_id:
                break
            out.append({"id": caption["id"], "caption": caption.get("caption")})
        return out

    def model(self) -> dict[str, Any]:
        """The model the index was built with, by name (:func:`~vsekit.serving.model_name.describe_model`)."""
        if self._model is None:
            meta = getattr(self.require(), "meta", None)
            self._model = describe_model(meta.get("model") if isinstance(meta, dict) else None)
        return self._model


def decode_image(data: bytes, filename: str, max_pixels: int) -> Any:
    """An uploaded file as an RGB PIL image; 415 when it is not an image, 413 when it has too many pixels."""
    name = f"image {shorten(filename or 'upload', 60)}"
    if not data:
        raise ApiError(415, f"{name}: the upload is empty")
    try:
        return open_image(data, name=name, max_pixels=max_pixels)
    except ImageTooLargeError as e:
        raise ApiError(413, str(e)) from None
    except DataError as e:
        raise ApiError(415, str(e)) from None


def make_thumbnail(path: Path, size: int, max_pixels: int) -> bytes:
    """A JPEG thumbnail of an indexed photo (messages name the file, never its folder)."""
    try:
        image = open_image(path, name=path.name, max_pixels=max_pixels, thumbnail=size)
    except ImageTooLargeError as e:
        raise ApiError(413, str(e)) from None
    except DataError as e:
        raise ApiError(415, str(e)) from None
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()