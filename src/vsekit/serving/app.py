"""The HTTP search service of ``vsekit serve``: a FastAPI app over one :class:`~vsekit.index.Index`.

Endpoints (JSON, described by the OpenAPI schema at ``/openapi.json`` and the page at ``/docs``):

* ``GET /api/search?q=TEXT`` or ``?item=ID``, with ``k``, ``offset`` (pagination), ``target``
  (``image`` or ``text``: which items to rank) and ``group`` (``image``: caption results one per image, each
  with its matching captions; ``k`` and ``offset`` then count images);
* ``POST /api/search``: the same with an uploaded image (``multipart/form-data``, field ``image``);
* ``GET /api/items/{id}``: an item's metadata, with the captions of its image; ``/api/items/{id}/image`` its
  file and ``/api/items/{id}/thumbnail?size=`` a JPEG thumbnail (kept in a bounded in-memory cache);
* ``GET /api/health`` and ``GET /api/stats`` (index size, model: its file and the name a person knows it by,
  with its test metrics where its model folder records them; backend, query latency percentiles over the last
  queries, uptime);
* ``/``: the search page (plain HTML, CSS and JavaScript from :mod:`vsekit.serving`'s ``static``
  folder; nothing is loaded from elsewhere).

Safety: the index is loaded once (at startup when given as a path); query text, ``k``, ``offset`` and
ids are bounded; an upload is refused by its ``Content-Length`` before it is read and while it is read
when larger than the limit, and must decode as an image of bounded pixel count; files are found only
from item ids, through :meth:`Index.resolve_path`, and are served only when inside the collection
root; every error is ``{"error": {"code", "message"}}`` with a 4xx/5xx status, never a traceback
page; no CORS unless origins are given; the page is served with a strict Content-Security-Policy.
"""

import contextlib
from collections.abc import Iterable
from typing import Any

from vsekit.errors import ConfigError

try:
    from fastapi import FastAPI
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(f"vsekit serve needs the 'serve' extra ({exc.name} is missing): pip install 'vsekit[serve]'") from None

from .errors import install_error_handlers
from .middleware import MULTIPART_OVERHEAD, AllowedHosts, SecurityHeaders, UploadLimit, check_allowed_hosts
from .routes import STATIC_DIR, add_item_routes, add_page_routes, add_search_routes, add_service_routes
from .schemas import (
    ERROR_RESPONSES,
    CaptionMatch,
    ErrorResponse,
    HealthResponse,
    ItemCaption,
    ItemResponse,
    LatencyStats,
    SearchHit,
    SearchResponse,
    ServiceLimits,
    StatsResponse,
)
from .service import SearchService

__all__ = [
    "STATIC_DIR",
    "CaptionMatch",
    "ErrorResponse",
    "HealthResponse",
    "ItemCaption",
    "ItemResponse",
    "LatencyStats",
    "SearchHit",
    "SearchResponse",
    "ServiceLimits",
    "StatsResponse",
    "create_app",
]


def create_app(
    index: Any,
    *,
    cors_origins: Iterable[str] = (),
    allowed_hosts: Iterable[str] = (),
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
        allowed_hosts: host names served besides IP addresses and ``localhost`` (``name``, ``*.domain``, or
            ``*`` for any): a request whose ``Host`` header names anything else gets a 400 (DNS rebinding).
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
        ConfigError: if a limit is not a positive integer, or a CORS origin or allowed host is malformed.
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
    hosts = check_allowed_hosts(allowed_hosts)
    service = SearchService(index, device, limits)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.load()
        yield

    app = FastAPI(
        title="vsekit search",
        summary="Text and image search over a vsekit index",
        version=package_version(),
        lifespan=lifespan,
        docs_url=None,  # served by add_page_routes from local files: nothing is loaded from a CDN
        redoc_url=None,
        responses=ERROR_RESPONSES,
    )
    app.state.service = service
    app.state.limits = limits
    install_error_handlers(app, service)
    add_search_routes(app, service, limits)
    add_item_routes(app, service, limits)
    add_service_routes(app, service, limits)
    add_page_routes(app)
    if origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"], max_age=600)
    app.add_middleware(UploadLimit, limit=limits.max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(AllowedHosts, names=hosts)
    app.add_middleware(SecurityHeaders)  # outermost: every answer gets the headers
    return app


def package_version() -> str:
    """The installed vsekit version (the OpenAPI schema's ``info.version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vsekit")
    except PackageNotFoundError:
        return "unknown"
