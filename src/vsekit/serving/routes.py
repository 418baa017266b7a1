"""The endpoints of the service, added to an app by topic: search, items, service state, the page and its docs.

The handlers are defined inside the functions that add them because FastAPI reads their annotations (which hold
the service's limits) when they are defined.
"""

# no ``from __future__ import annotations``: FastAPI reads the endpoint annotations at definition time
import time
from pathlib import Path
from typing import Annotated, Literal

from vsekit.errors import ConfigError

try:
    from fastapi import FastAPI, File, Form, Query, UploadFile
    from fastapi import Path as PathParam
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(f"vsekit serve needs the 'serve' extra ({exc.name} is missing): pip install 'vsekit[serve]'") from None

from .errors import ApiError, shorten
from .schemas import HealthResponse, ItemResponse, SearchResponse, ServiceLimits, StatsResponse
from .service import IMAGE_MEDIA_TYPES, SearchService, decode_image, make_thumbnail

ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
"""What an item id may hold, in the schema: anything but control characters (Unicode category Cc)."""
TEXT_PATTERN = r"\S"
"""A query text holds at least one character that is not white space."""

GROUP_DESCRIPTION = (
    "with target=text, 'image' gives one result per image (its best caption, with the image's other matching captions "
    "in 'captions'), and k and offset count images; image results are one per image already"
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The web page's files (``index.html``, ``app.js``, ``style.css``, ``docs.html``, ``docs.js``)."""


def add_search_routes(app: FastAPI, service: SearchService, limits: ServiceLimits) -> None:
    """``GET /api/search`` (text or item queries) and ``POST /api/search`` (an uploaded image)."""
    K = Annotated[int, Query(ge=1, le=limits.max_k, description=f"results per page, 1 to {limits.max_k}")]
    Offset = Annotated[int, Query(ge=0, le=limits.max_offset, description="results to skip (pagination)")]
    Target = Annotated[Literal["image", "text"], Query(description="rank images or texts")]
    Group = Annotated[Literal["none", "image"], Query(description=GROUP_DESCRIPTION)]

    @app.get("/api/search", response_model=SearchResponse, tags=["search"])
    def search(
        q: Annotated[str | None, Query(max_length=limits.max_query_chars, pattern=TEXT_PATTERN, description="query text")] = None,
        item: Annotated[
            str | None,
            Query(max_length=limits.max_id_chars, pattern=ID_PATTERN, description="id of an indexed item to search with"),
        ] = None,
        k: K = 10,
        offset: Offset = 0,
        target: Target = "image",
        group: Group = "none",
    ) -> SearchResponse:
        """Search by text (``q``) or with an indexed item (``item``): the ``k`` best ``target`` items
        after ``offset``. Give exactly one of ``q`` and ``item`` (a rule OpenAPI parameters cannot state; 422
        otherwise)."""
        if (q is None) == (item is None):
            raise ApiError(422, "give exactly one of q (query text) or item (an item id)")
        if q is not None:
            if not q.strip():
                raise ApiError(422, "q: the query text is empty")
            return service.search("text", k, offset, target, group, text=q)
        service.item(item, "item")
        return service.search("item", k, offset, target, group, item=item)

    @app.post("/api/search", response_model=SearchResponse, tags=["search"])
    def search_image(
        image: Annotated[UploadFile, File(description=f"an image file, at most {limits.max_upload_bytes} bytes")],
        k: Annotated[int, Form(ge=1, le=limits.max_k)] = 10,
        offset: Annotated[int, Form(ge=0, le=limits.max_offset)] = 0,
        target: Annotated[Literal["image", "text"], Form()] = "image",
        group: Annotated[Literal["none", "image"], Form(description=GROUP_DESCRIPTION)] = "none",
    ) -> SearchResponse:
        """Search with an uploaded image (``multipart/form-data``)."""
        data = image.file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise ApiError(413, f"image: the upload is larger than the limit of {limits.max_upload_bytes} bytes")
        picture = decode_image(data, image.filename or "", limits.max_image_pixels)
        return service.search("image", k, offset, target, group, image=picture)


def add_item_routes(app: FastAPI, service: SearchService, limits: ServiceLimits) -> None:
    """``/api/items/{id}`` (metadata), ``.../image`` (the file) and ``.../thumbnail`` (a cached JPEG)."""
    ItemId = Annotated[
        str,
        PathParam(max_length=limits.max_id_chars, pattern=ID_PATTERN, description="the item's id (URL-encoded; may contain '/')"),
    ]

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
            data = make_thumbnail(service.file(item_id), size, limits.max_image_pixels)
            service.thumbnails.put(key, data)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})

    @app.get(
        "/api/items/{item_id:path}/image", tags=["items"], response_class=FileResponse,
        responses={200: {"content": {"image/*": {}}, "description": "the image file"}},
    )  # fmt: skip
    def image_file(item_id: ItemId) -> FileResponse:
        """An item's image file, as stored in the collection."""
        path = service.file(item_id)
        media_type = IMAGE_MEDIA_TYPES.get(path.suffix.lower())
        if media_type is None:
            raise ApiError(415, f"item {shorten(item_id, 80)}: {path.suffix!r} files are not served")
        return FileResponse(path, media_type=media_type, headers={"cache-control": "private, max-age=3600"})

    @app.get("/api/items/{item_id:path}", response_model=ItemResponse, tags=["items"])
    def item(item_id: ItemId) -> ItemResponse:
        """An item's metadata."""
        record = service.item(item_id)
        record = {k: v for k, v in record.items() if k not in ("thumbnail_url", "image_url", "captions")}
        return ItemResponse(**record, **service.urls(record), captions=service.captions_of(record))


def add_service_routes(app: FastAPI, service: SearchService, limits: ServiceLimits) -> None:
    """``/api/health`` and ``/api/stats``."""

    @app.get("/api/health", response_model=HealthResponse, tags=["service"])
    def health() -> HealthResponse:
        """200 when the index is loaded and the service answers."""
        return HealthResponse(status="ok", items=service.item_count())

    @app.get("/api/stats", response_model=StatsResponse, tags=["service"])
    def stats() -> StatsResponse:
        """Index size, model (its file, and the name a person knows it by, with its test metrics where known),
        backend, query latency percentiles and uptime."""
        index_stats = service.index_stats()
        model = index_stats.get("model")
        model = model.get("checkpoint") if isinstance(model, dict) else model
        return StatsResponse(
            index={**index_stats, "thumbnail_cache": service.thumbnails.stats()},
            items=service.item_count(),
            model=None if model is None else str(model),
            **service.model(),
            backend=None if index_stats.get("backend") is None else str(index_stats["backend"]),
            queries=service.queries,
            errors=service.errors,
            latency_ms=service.latency(),
            uptime_s=round(time.monotonic() - service.started, 3),
            limits={k: v for k, v in vars(limits).items()},
        )


def add_page_routes(app: FastAPI) -> None:
    """``/`` (the search page), ``/docs`` (Swagger UI from local files) and their static files."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"cache-control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    swagger = swagger_ui_dir()
    if swagger is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger), name="docs-assets")


def swagger_ui_dir() -> Path | None:
    """The Swagger UI files of the ``swagger-ui-bundle-v2`` package (the serve extra), if installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").is_file() else None
