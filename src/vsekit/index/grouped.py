"""Caption results grouped by image: one result per image, in the order of its best caption.

An index holds each caption as an item of its own (``{image id}#{n}``, see :mod:`vsekit.index.collection`), so a
text query for captions often returns several captions of one image in a row. Grouped, a page of ``k`` results is
``k`` images, each with its captions that rank before the first caption of the next page's first image, so that
pages are slices of one grouped ranking. :meth:`vsekit.index.Index.search` (``group="image"``), the HTTP API's
``group`` parameter and ``vsekit search --group image`` all answer through :func:`search_grouped`.
"""

from __future__ import annotations

from typing import Any

from vsekit.index.hits import Hit, ImageGroup

__all__ = ["GROUPS", "group_by_image", "search_grouped"]

GROUPS = ("none", "image")
"""The values of ``group``: ``none`` (every result on its own) and ``image`` (captions grouped by image)."""


def search_grouped(index: Any, k: int = 10, offset: int = 0, **query: Any) -> tuple[list[ImageGroup], bool]:
    """The ``k`` images after ``offset`` whose captions best match ``query`` (``text``, ``image`` or ``item``, as
    :meth:`vsekit.index.Index.search` takes them), and whether more follow.

    The caption ranking is read deeper (4× at a time) until ``offset + k + 1`` groups are found or it ends. A
    caption of no image is a group of its own.
    """
    want = offset + k + 1  # this page's groups and the next page's first, which only tells whether more follow
    total = max(1, int(index.stats().get("num_texts", 0)))
    depth = min(total, max(64, 4 * want))
    while True:
        found = index.search(**query, k=depth, offset=0, target="text")
        groups = group_by_image(index, found, want)
        if len(groups) >= want or len(found) < depth or depth >= total:
            break
        depth = min(total, 4 * depth)
    page = []
    for n, members in enumerate(groups[offset : offset + k]):
        best, image_id = members[0]
        page.append(ImageGroup(rank=offset + n + 1, score=best.score, id=best.id, modality=best.modality, path=best.path,
                               caption=best.caption, image_id=image_id, captions=[h for h, _ in members]))  # fmt: skip
    return page, len(groups) > offset + k


def group_by_image(index: Any, hits: list[Hit], want: int) -> list[list[tuple[Hit, str | None]]]:
    """Caption hits (best first) as groups of ``(hit, image id)`` by image, in order of their first member, up to
    the ``want``-th group, which is left empty: the captions after its first are not read."""
    groups: dict[tuple[str, str], list[tuple[Hit, str | None]]] = {}
    for h in hits:
        image_id = index.item(h.id).get("image_id")
        key = ("image", image_id) if image_id else ("text", h.id)
        if key not in groups:
            groups[key] = []
            if len(groups) == want:
                break
        groups[key].append((h, image_id))
    return list(groups.values())
