"""A search result, :class:`Hit`: its own small module, so that the HTTP client builds hits without importing
torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Hit"]


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
