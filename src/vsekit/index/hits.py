"""A search result, :class:`Hit`, and a caption result grouped by image, :class:`ImageGroup`: their own small
module, so that the HTTP client builds hits without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Hit", "ImageGroup"]


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


@dataclass
class ImageGroup(Hit):
    """A caption result of a search grouped by image (``group="image"`` of the HTTP API): the hit is the image's
    best caption, ranked among the images.

    Attributes:
        image_id: the id of the image the captions describe (None for a caption of no image).
        captions: the image's captions that rank before the next page's first image, best first, each a text
            :class:`Hit` whose rank is its rank among all captions; the first is the group's own caption.
    """

    image_id: str | None = None
    captions: list[Hit] = field(default_factory=list)
