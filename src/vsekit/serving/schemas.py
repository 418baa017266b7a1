"""The service's limits and the response models of its OpenAPI schema."""

from dataclasses import dataclass
from typing import Any, Literal

from vsekit.errors import ConfigError

try:
    from pydantic import BaseModel, ConfigDict, Field
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(f"vsekit serve needs the 'serve' extra ({exc.name} is missing): pip install 'vsekit[serve]'") from None


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


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(description="machine-readable kind, e.g. invalid_request, not_found, payload_too_large")
    message: str = Field(description="one line for a person: the parameter or file and what was expected")


class ErrorResponse(BaseModel):
    """The body of every 4xx / 5xx response."""

    error: ErrorDetail


class CaptionMatch(BaseModel):
    """A caption that matched the query, listed under its image in a grouped result (``group=image``)."""

    id: str = Field(description="the caption's id in the index")
    caption: str | None = Field(None, description="the text")
    score: float = Field(description="its similarity to the query")
    rank: int = Field(description="1-based rank in the ranking of all captions, not grouped")


class SearchHit(BaseModel):
    """One result."""

    rank: int = Field(description="1-based rank over the whole ranking (offset included; with group=image, of the images)")
    score: float = Field(description="similarity to the query (higher is closer)")
    id: str = Field(description="the item's id in the index")
    modality: Literal["image", "text"]
    path: str | None = Field(None, description="image file relative to the collection root, if any")
    caption: str | None = Field(None, description="the text, or the first caption of an image, if any")
    thumbnail_url: str | None = Field(None, description="relative URL of a thumbnail, when the item has an image file")
    image_url: str | None = Field(None, description="relative URL of the image file, when the item has one")
    image_id: str | None = Field(None, description="for a caption: the id of the image it describes, if any")
    captions: list[CaptionMatch] | None = Field(
        None,
        description="with group=image (caption results only): the captions of this result's image that rank before "
        "the first caption of the next page's first result, best first; the first is the result itself",
    )


class QueryInfo(BaseModel):
    """The query as the service understood it."""

    kind: Literal["text", "image", "item"]
    text: str | None = None
    item: str | None = None
    k: int
    offset: int
    target: Literal["image", "text"]
    group: Literal["none", "image"] = "none"


class SearchResponse(BaseModel):
    """A page of results."""

    query: QueryInfo
    hits: list[SearchHit]
    has_more: bool = Field(description="whether a next page (offset + k) has results")
    took_ms: float = Field(description="time spent on the query in the service, in milliseconds")


class ItemCaption(BaseModel):
    """A caption of an item's image."""

    id: str
    caption: str | None = None


class ItemResponse(BaseModel):
    """An indexed item's metadata (the index's record of it, plus URLs)."""

    model_config = ConfigDict(extra="allow")

    id: str
    modality: Literal["image", "text"]
    path: str | None = None
    caption: str | None = None
    thumbnail_url: str | None = None
    image_url: str | None = None
    captions: list[ItemCaption] = Field(
        default_factory=list,
        description="the captions of the item's image, in index order (for a caption: of its image, itself included; a "
        "caption of no image: itself)",
    )


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
    model: str | None = Field(None, description="the checkpoint the index was built with (its file or folder name)")
    model_name: str | None = Field(
        None, description="the model by the name a person knows it by: a ready model's or model folder's name, or the run's name"
    )
    model_source: Literal["ready", "folder", "run"] | None = Field(
        None, description="what model_name names: a ready model of vsekit, a model folder, or a training run"
    )
    model_description: str | None = Field(None, description="the model folder's one-line description, if any")
    model_metrics: dict[str, float] = Field(
        default_factory=dict, description="the model's test metrics where its model folder records them (e.g. test_mR)"
    )
    backend: str | None = Field(None, description="the search backend")
    queries: int = Field(description="search requests answered since start")
    errors: int = Field(description="requests answered with a 4xx/5xx error since start")
    latency_ms: LatencyStats
    uptime_s: float
    limits: dict[str, int]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in (
        (400, "malformed request"), (404, "unknown item or file"), (413, "query text or upload too large"),
        (415, "upload is not an image"), (422, "invalid parameter"), (500, "internal error"),
    )
}  # fmt: skip
