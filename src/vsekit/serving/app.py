"""The HTTP search service of ``vsekit serve``: a FastAPI app over one :class:`~vsekit.index.Index`.

Endpoints (JSON, described by the OpenAPI schema at ``/openapi.json`` and the page at ``/docs``):

* ``GET /api/search?q=TEXT`` or ``?item=ID``, with ``k``, ``offset`` (pagination) and ``target``
  (``image`` or ``text``: which items to rank);
* ``POST /api/search``: the same with an uploaded image (``multipart/form-data``, field ``image``);
* ``GET /api/items/{id}``: an item's metadata; ``/api/items/{id}/image`` its file and
  ``/api/items/{id}/thumbnail?size=`` a JPEG thumbnail (kept in a bounded in-memory cache);
* ``GET /api/health`` and ``GET /api/stats`` (index size, model, backend, query latency percentiles
  over the last queries, uptime);
* ``/``: the search page (plain HTML, CSS and JavaScript from :mod:`vsekit.serving`'s ``static``
  folder; nothing is loaded from elsewhere).

Safety: the index is loaded once (at startup when given as a path); query text, ``k``, ``offset`` and
ids are bounded; an upload is refused by its ``Content-Length`` before it is read and while it is read
when larger than the limit, and must decode as an image of bounded pixel count; files are found only
from item ids, through :meth:`Index.resolve_path`, and are served only when inside the collection
root; every error is ``{"error": {"code", "message"}}`` with a 4xx/5xx status, never a traceback
page; no CORS unless origins are given; the page is served with a strict Content-Security-Policy.
"""

# no ``from __future__ import annotations``: FastAPI reads the endpoint annotations at definition time,
# and they refer to the limits local to create_app
import contextlib
import io
import logging
import threading
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from vsekit.errors import ConfigError, DataError, VsekitError

try:
    from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.datastructures import Headers, MutableHeaders
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(f"vsekit serve needs the 'serve' extra ({exc.name} is missing): pip install 'vsekit[serve]'") from None

__all__ = [
    "ErrorResponse",
    "HealthResponse",
    "ItemResponse",
    "LatencyStats",
    "SearchHit",
    "SearchResponse",
    "ServiceLimits",
    "StatsResponse",
    "create_app",
]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The web page's files (``index.html``, ``app.js``, ``style.css``, ``docs.html``, ``docs.js``)."""

_PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets inline styles and draws its icons from data: URLs
_DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_IMAGE_MEDIA_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".webp": "image/webp",
    ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
}  # fmt: skip
_MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers allowed beside the file itself
_STATUS_CODES = {
    400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests", 500: "internal_error",
    503: "unavailable",
}  # fmt: skip


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds on what one request may ask.

    Attributes:
        max_k: largest ``k`` (results per page).
        max_offset: largest ``offset`` (so pages go up to ``max_offset + max_k``).
        max_query_chars: longest query text, in characters.
        max_id_chars: longest item id, in characters.
        max_upload_bytes: largest uploaded image file, in bytes.
        max_image_pixels: largest uploaded (or thumbnailed) image, in pixels (decompression-bomb guard).
        min_thumbnail: smallest thumbnail side, in pixels.
        max_thumbnail: largest thumbnail side, in pixels.
        thumbnail_cache_bytes: memory held by the thumbnail cache at most (least recently used first out).
        latency_window: how many recent queries the latency percentiles of ``/api/stats`` cover.
    """

    max_k: int = 100
    max_offset: int = 10_000
    max_query_chars: int = 1_000
    max_id_chars: int = 1_024
    max_upload_bytes: int = 10 * 2**20
    max_image_pixels: int = 50_000_000
    min_thumbnail: int = 16
    max_thumbnail: int = 1_024
    thumbnail_cache_bytes: int = 64 * 2**20
    latency_window: int = 1_000

    def validate(self) -> None:
        """Raise :class:`~vsekit.errors.ConfigError` naming the first limit that is not a positive integer."""
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "max_offset" else 1):
                raise ConfigError(f"serve: {name} must be a positive integer, got {value!r}")
        if self.min_thumbnail > self.max_thumbnail:
            raise ConfigError(f"serve: min_thumbnail ({self.min_thumbnail}) is larger than max_thumbnail ({self.max_thumbnail})")


# ---------------------------------------------------------------------------------------------------
# response models (the OpenAPI schema)


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(description="machine-readable kind, e.g. invalid_request, not_found, payload_too_large")
    message: str = Field(description="one line for a person: the parameter or file and what was expected")


class ErrorResponse(BaseModel):
    """The body of every 4xx / 5xx response."""

    error: ErrorDetail


class SearchHit(BaseModel):
    """One result."""

    rank: int = Field(description="1-based rank over the whole ranking (offset included)")
    score: float = Field(description="similarity to the query (higher is closer)")
    id: str = Field(description="the item's id in the index")
    modality: Literal["image", "text"]
    path: str | None = Field(None, description="image file relative to the collection root, if any")
    caption: str | None = Field(None, description="the text, or the first caption of an image, if any")
    thumbnail_url: str | None = Field(None, description="relative URL of a thumbnail, when the item has an image file")
    image_url: str | None = Field(None, description="relative URL of the image file, when the item has one")


class QueryInfo(BaseModel):
    """The query as the service understood it."""

    kind: Literal["text", "image", "item"]
    text: str | None = None
    item: str | None = None
    k: int
    offset: int
    target: Literal["image", "text"]


class SearchResponse(BaseModel):
    """A page of results."""

    query: QueryInfo
    hits: list[SearchHit]
    has_more: bool = Field(description="whether a next page (offset + k) has results")
    took_ms: float = Field(description="time spent on the query in the service, in milliseconds")


class ItemResponse(BaseModel):
    """An indexed item's metadata (the index's record of it, plus URLs)."""

    model_config = ConfigDict(extra="allow")

    id: str
    modality: Literal["image", "text"]
    path: str | None = None
    caption: str | None = None
    thumbnail_url: str | None = None
    image_url: str | None = None


class HealthResponse(BaseModel):
    """Liveness: the service answers and its index is loaded."""

    status: Literal["ok"]
    items: int = Field(description="number of indexed items (images and texts)")


class LatencyStats(BaseModel):
    """Query latency over the last queries, in milliseconds (``None`` before the first query): the time
    spent embedding the query and searching, not counting the wait while the model answers another request."""

    count: int = Field(description="queries the percentiles cover (the rolling window)")
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None


class StatsResponse(BaseModel):
    """Index size, model, backend and service counters."""

    index: dict[str, Any] = Field(description="the index's own statistics (Index.stats())")
    items: int
    model: str | None = Field(None, description="the checkpoint the index was built with")
    backend: str | None = Field(None, description="the search backend")
    queries: int = Field(description="search requests answered since start")
    errors: int = Field(description="requests answered with a 4xx/5xx error since start")
    latency_ms: LatencyStats
    uptime_s: float
    limits: dict[str, int]


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in (
        (400, "malformed request"), (404, "unknown item or file"), (413, "query text or upload too large"),
        (415, "upload is not an image"), (422, "invalid parameter"), (500, "internal error"),
    )
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# errors


class ApiError(HTTPException):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(status_code=status, detail=message)
        self.code = code or _STATUS_CODES.get(status, "error")


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validation_message(exc: RequestValidationError) -> str:
    """One line from pydantic's errors: ``k: Input should be less than or equal to 100 (got 1000)``."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = ".".join(loc[1:]) if len(loc) > 1 else (loc[0] if loc else "request")
        if err.get("type") == "json_invalid":
            parts.append(f"body: malformed JSON ({err.get('ctx', {}).get('error', 'cannot parse')})")
            continue
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            parts.append(f"{where}: required")
        else:
            got = err.get("input")
            parts.append(f"{where}: {msg}" + ("" if got is None or isinstance(got, dict) else f" (got {_short(got)})"))
    return "; ".join(parts) or "invalid request"


# ---------------------------------------------------------------------------------------------------
# middleware (plain ASGI: no per-request task overhead)


class _SecurityHeaders:
    """Adds a Content-Security-Policy and the usual hardening headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = _DOCS_CSP if scope["path"] == "/docs" else _PAGE_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("content-security-policy", csp)
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("x-frame-options", "DENY")
                headers.setdefault("referrer-policy", "no-referrer")
                headers.setdefault("cross-origin-opener-policy", "same-origin")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _UploadLimit:
    """Refuses request bodies larger than ``limit`` bytes: by ``Content-Length`` before reading anything,
    and while reading (chunked uploads, or a ``Content-Length`` that lies); checks that a POST to
    ``/api/search`` is ``multipart/form-data``."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["path"] == "/api/search":
            ctype = headers.get("content-type", "")
            if not ctype.lower().startswith("multipart/form-data"):
                msg = f"POST /api/search takes multipart/form-data with an 'image' file, got {ctype or 'no content type'!r}; search by text with GET /api/search?q=..."
                await _error_response(415, "unsupported_media_type", msg)(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await _error_response(400, "bad_request", f"Content-Length: not a number ({_short(length)})")(scope, receive, send)
                return
            if int(length) > self.limit:
                msg = f"request body of {int(length)} bytes is larger than the limit of {self.limit} bytes"
                await _error_response(413, "payload_too_large", msg)(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, f"request body is larger than the limit of {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


# ---------------------------------------------------------------------------------------------------
# the service state


class _ThumbnailCache:
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


class _Service:
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
        self.thumbnails = _ThumbnailCache(limits.thumbnail_cache_bytes)
        self._stats: dict[str, Any] | None = None

    def load(self) -> None:
        if self.index is None:
            from vsekit.index import Index

            t0 = time.perf_counter()
            self.index = Index.load(self.source, device=self.device)
            log.info("loaded the index %s in %.1fs", self.source, time.perf_counter() - t0)
        self.started = time.monotonic()

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
            raise ApiError(404, f"{name}: no item with id {_short(item_id, 80)} in the index") from None
        return dict(record)

    def file(self, item_id: str) -> Path:
        """The image file of an item, found through ``Index.resolve_path`` and checked to lie inside the
        collection root (symlinks resolved)."""
        record = self.item(item_id)
        index = self.require()
        if record.get("modality") != "image" or not record.get("path"):
            raise ApiError(404, f"item {_short(item_id, 80)} is not an image with a file (see its image_id)")
        try:
            path = Path(index.resolve_path(item_id))
        except DataError as exc:
            status = 403 if "outside" in str(exc) or "leaves" in str(exc) else 404
            raise ApiError(status, str(exc)) from None
        root = Path(index.root).resolve()
        real = path.resolve()
        if not real.is_relative_to(root):  # resolve_path checks this too; never serve outside the root
            raise ApiError(403, f"item {_short(item_id, 80)}: its file is outside the collection")
        if not real.is_file():
            raise ApiError(404, f"item {_short(item_id, 80)}: its file is missing from the collection")
        return real


    def urls(self, record: dict[str, Any]) -> dict[str, str | None]:
        """The thumbnail and file URLs of an item's image: its own for an image, its image's for a
        caption (None when there is no file)."""
        if not record.get("path"):
            return {"thumbnail_url": None, "image_url": None}
        image_id = record["id"]
        if record.get("modality") == "text":
            image_id = record.get("image_id")
            if image_id is None:
                image_id = self.require().item(record["id"]).get("image_id")
            if not image_id:
                return {"thumbnail_url": None, "image_url": None}
        base = "/api/items/" + quote(image_id, safe="/")
        return {"thumbnail_url": base + "/thumbnail", "image_url": base + "/image"}


def _decode_image(data: bytes, filename: str, max_pixels: int) -> Any:
    """An uploaded file as an RGB PIL image; 415 when it is not an image, 413 when it has too many pixels."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    name = _short(filename or "upload", 60)
    if not data:
        raise ApiError(415, f"image: the upload {name} is empty")
    unreadable = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > max_pixels:
                    raise ApiError(413, f"image: {name} is {width}x{height} pixels, more than the limit of {max_pixels}")
                probe.verify()
            image = Image.open(io.BytesIO(data))
            image.load()
            return image.convert("RGB")
    except ApiError:
        raise
    except (*unreadable, Image.DecompressionBombWarning):
        raise ApiError(415, f"image: the upload {name} is not an image that Pillow can read") from None


def _thumbnail(path: Path, size: int, max_pixels: int) -> bytes:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise ApiError(413, f"{path.name}: {image.width}x{image.height} pixels, too large to thumbnail")
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=85)
            return out.getvalue()
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ApiError(415, f"{path.name}: not an image that Pillow can read") from None


# ---------------------------------------------------------------------------------------------------
# the app


def create_app(
    index: Any,
    *,
    cors_origins: Iterable[str] = (),
    max_upload_bytes: int = ServiceLimits.max_upload_bytes,
    max_k: int = ServiceLimits.max_k,
    max_query_chars: int = ServiceLimits.max_query_chars,
    max_offset: int = ServiceLimits.max_offset,
    max_image_pixels: int = ServiceLimits.max_image_pixels,
    thumbnail_cache_bytes: int = ServiceLimits.thumbnail_cache_bytes,
    device: str = "cpu",
) -> FastAPI:
    """The search service over one index.

    Args:
        index: an open :class:`~vsekit.index.Index`, or the path of an index folder (loaded once, when the
            app starts: its lifespan).
        cors_origins: origins allowed to call the API from a browser (none by default: same origin only).
        max_upload_bytes: largest uploaded image file.
        max_k: largest ``k`` a request may ask.
        max_query_chars: longest query text.
        max_offset: largest pagination offset.
        max_image_pixels: largest uploaded image in pixels (decompression-bomb guard).
        thumbnail_cache_bytes: memory the thumbnail cache may hold.
        device: where the index and its model run when ``index`` is a path (``cpu``, ``cuda``...).

    Returns:
        The FastAPI application (run it with uvicorn, or :func:`vsekit.serving.serve`).

    Raises:
        ConfigError: if a limit is not a positive integer or a CORS origin is malformed.
    """
    limits = ServiceLimits(
        max_k=max_k, max_offset=max_offset, max_query_chars=max_query_chars, max_upload_bytes=max_upload_bytes,
        max_image_pixels=max_image_pixels, thumbnail_cache_bytes=thumbnail_cache_bytes,
    )  # fmt: skip
    limits.validate()
    origins = [str(o).rstrip("/") for o in cors_origins]
    for origin in origins:
        if origin != "*" and not (origin.startswith(("http://", "https://")) and "/" not in origin.split("://", 1)[1]):
            raise ConfigError(f"serve: CORS origin {origin!r} is not of the form http(s)://host[:port]")
    service = _Service(index, device, limits)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.load()
        yield

    app = FastAPI(
        title="vsekit search",
        summary="Text and image search over a vsekit index",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # served below from local files: nothing is loaded from a CDN
        redoc_url=None,
        responses=_ERRORS,
    )
    app.state.service = service
    app.state.limits = limits

    # -- errors: always JSON -------------------------------------------------------------------------

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        service.errors += 1
        code = getattr(exc, "code", None) or _STATUS_CODES.get(exc.status_code, "error")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {_request.url.path[:200]}"
        elif exc.status_code == 405:
            message = f"method {_request.method} is not allowed on {_request.url.path[:200]}"
        elif exc.status_code == 400 and message == "There was an error parsing the body":
            message = "malformed request body (expected multipart/form-data with an 'image' file)"
        return _error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        service.errors += 1
        return _error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        service.errors += 1
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(500, "internal_error", "internal error (the service log has the details)")

    # -- search ------------------------------------------------------------------------------------------

    def run_search(kind: str, k: int, offset: int, target: str, **query: Any) -> SearchResponse:
        index = service.require()
        try:
            with service.lock:  # timed inside: the query's own work, not the wait for a busy model
                t0 = time.perf_counter()
                hits = index.search(**query, k=k + 1, offset=offset, target=target)
                took = time.perf_counter() - t0
        except VsekitError as exc:
            raise ApiError(400, str(exc)) from None
        service.record(took)
        out = []
        for hit in hits[:k]:
            d = hit.to_dict()
            out.append(SearchHit(**d, **service.urls(d)))
        info = QueryInfo(kind=kind, text=query.get("text"), item=query.get("item"), k=k, offset=offset, target=target)
        return SearchResponse(query=info, hits=out, has_more=len(hits) > k, took_ms=round(took * 1000.0, 3))

    K = Annotated[int, Query(ge=1, le=limits.max_k, description=f"results per page, 1 to {limits.max_k}")]
    Offset = Annotated[int, Query(ge=0, le=limits.max_offset, description="results to skip (pagination)")]
    Target = Annotated[Literal["image", "text"], Query(description="rank images or texts")]

    @app.get("/api/search", response_model=SearchResponse, tags=["search"])
    def search(
        q: Annotated[str | None, Query(max_length=limits.max_query_chars, description="query text")] = None,
        item: Annotated[str | None, Query(max_length=limits.max_id_chars, description="id of an indexed item to search with")] = None,
        k: K = 10,
        offset: Offset = 0,
        target: Target = "image",
    ) -> SearchResponse:
        """Search by text (``q``) or with an indexed item (``item``): the ``k`` best ``target`` items
        after ``offset``."""
        if (q is None) == (item is None):
            raise ApiError(422, "give exactly one of q (query text) or item (an item id)")
        if q is not None:
            if not q.strip():
                raise ApiError(422, "q: the query text is empty")
            return run_search("text", k, offset, target, text=q)
        service.item(item, "item")
        return run_search("item", k, offset, target, item=item)

    @app.post("/api/search", response_model=SearchResponse, tags=["search"])
    def search_image(
        image: Annotated[UploadFile, File(description=f"an image file, at most {limits.max_upload_bytes} bytes")],
        k: Annotated[int, Form(ge=1, le=limits.max_k)] = 10,
        offset: Annotated[int, Form(ge=0, le=limits.max_offset)] = 0,
        target: Annotated[Literal["image", "text"], Form()] = "image",
    ) -> SearchResponse:
        """Search with an uploaded image (``multipart/form-data``)."""
        data = image.file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise ApiError(413, f"image: the upload is larger than the limit of {limits.max_upload_bytes} bytes")
        picture = _decode_image(data, image.filename or "", limits.max_image_pixels)
        return run_search("image", k, offset, target, image=picture)

    # -- items -------------------------------------------------------------------------------------------

    ItemId = Annotated[str, PathParam(description="the item's id (URL-encoded; may contain '/')")]

    @app.get(
        "/api/items/{item_id:path}/thumbnail", tags=["items"], response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG thumbnail"}},
    )  # fmt: skip
    def thumbnail(
        item_id: ItemId,
        size: Annotated[int, Query(ge=limits.min_thumbnail, le=limits.max_thumbnail, description="longest side in pixels")] = 256,
    ) -> Response:
        """A JPEG thumbnail of an item's image (cached in memory)."""
        key = (item_id, size)
        data = service.thumbnails.get(key)
        if data is None:
            data = _thumbnail(service.file(item_id), size, limits.max_image_pixels)
            service.thumbnails.put(key, data)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})

    @app.get(
        "/api/items/{item_id:path}/image", tags=["items"], response_class=FileResponse,
        responses={200: {"content": {"image/*": {}}, "description": "the image file"}},
    )  # fmt: skip
    def image_file(item_id: ItemId) -> FileResponse:
        """An item's image file, as stored in the collection."""
        path = service.file(item_id)
        media_type = _IMAGE_MEDIA_TYPES.get(path.suffix.lower())
        if media_type is None:
            raise ApiError(415, f"item {_short(item_id, 80)}: {path.suffix!r} files are not served")
        return FileResponse(path, media_type=media_type, headers={"cache-control": "private, max-age=3600"})

    @app.get("/api/items/{item_id:path}", response_model=ItemResponse, tags=["items"])
    def item(item_id: ItemId) -> ItemResponse:
        """An item's metadata."""
        record = service.item(item_id)
        record = {k: v for k, v in record.items() if k not in ("thumbnail_url", "image_url")}
        return ItemResponse(**record, **service.urls(record))

    # -- service -----------------------------------------------------------------------------------------

    @app.get("/api/health", response_model=HealthResponse, tags=["service"])
    def health() -> HealthResponse:
        """200 when the index is loaded and the service answers."""
        return HealthResponse(status="ok", items=service.item_count())

    @app.get("/api/stats", response_model=StatsResponse, tags=["service"])
    def stats() -> StatsResponse:
        """Index size, model, backend, query latency percentiles and uptime."""
        index_stats = service.index_stats()
        model = index_stats.get("model")
        model = model.get("checkpoint") if isinstance(model, dict) else model
        return StatsResponse(
            index={**index_stats, "thumbnail_cache": service.thumbnails.stats()},
            items=service.item_count(),
            model=None if model is None else str(model),
            backend=None if index_stats.get("backend") is None else str(index_stats["backend"]),
            queries=service.queries,
            errors=service.errors,
            latency_ms=service.latency(),
            uptime_s=round(time.monotonic() - service.started, 3),
            limits={k: v for k, v in vars(limits).items()},
        )

    # -- the page and the docs ---------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"cache-control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    swagger = _swagger_ui_dir()
    if swagger is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger), name="docs-assets")

    if origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"], max_age=600)
    app.add_middleware(_UploadLimit, limit=limits.max_upload_bytes + _MULTIPART_OVERHEAD)
    app.add_middleware(_SecurityHeaders)
    return app


def _swagger_ui_dir() -> Path | None:
    """The Swagger UI files of the ``swagger-ui-bundle-v2`` package (the serve extra), if installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vsekit")
    except PackageNotFoundError:
        return "unknown"
