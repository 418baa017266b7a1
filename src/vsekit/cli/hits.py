"""Answering and printing the queries of ``vsekit search``: one query or a file of them, from an open index or a
running server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

SERVER_ENV = "VSEKIT_SERVER"
"""The environment variable naming a running ``vsekit serve`` (its URL) that ``vsekit search`` asks when no
index is given."""

BATCH = 256
"""Queries embedded in one forward pass when a file of queries is answered from an index."""


def search_many(
    searcher: Any, queries: Sequence[tuple[str, str]], k: int, offset: int, target: str, group: str = "none"
) -> list[list[Any]]:
    """The hits of every ``(kind, query)`` (kind ``text`` or ``image``), in order.

    An open :class:`vsekit.index.Index` embeds the texts, then the images, ``BATCH`` at a time, and ranks each
    batch in one backend call; a :class:`vsekit.serving.SearchClient`, or a grouped search, takes one query at a
    time.
    """
    if not hasattr(searcher, "search_batch") or group != "none":
        return [searcher.search(**{kind: query}, k=k, offset=offset, target=target, group=group) for kind, query in queries]
    answers: list[list[Any]] = [[] for _ in queries]
    for kind in ("text", "image"):
        rows = [i for i, (kk, _) in enumerate(queries) if kk == kind]
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            given = [queries[i][1] for i in chunk]
            found = searcher.search_batch(**{f"{kind}s": given}, k=k, offset=offset, target=target)
            for i, hits in zip(chunk, found):
                answers[i] = hits
    return answers


def print_hits(hits: Sequence[Any], as_json: bool, query: dict[str, str] | None = None) -> None:
    """Print hits as a table (under a ``# query`` line when ``query`` is given) or as JSON (one line with the
    query when it is given, so that a file of queries prints JSON lines)."""
    if as_json:
        rows = [h.to_dict() for h in hits]
        if query is None:
            print(json.dumps(rows, indent=2, ensure_ascii=False))
        else:
            print(json.dumps({**query, "hits": rows}, ensure_ascii=False))
        return
    if query is not None:
        print(f"# {query['kind']}: {query['query']}")
    if not hits:
        print("no results")
        return
    width = min(60, max(len("id"), *(len(h.id) for h in hits)))
    print(f"{'rank':>4}  {'score':>7}  {'id':<{width}}  caption")
    for h in hits:
        print(f"{h.rank:>4}  {h.score:>7.4f}  {h.id:<{width}}  {h.caption or ''}")
        for c in getattr(h, "captions", [])[1:]:  # a grouped result: its image's other matching captions
            print(f"{'':>4}  {c.score:>7.4f}  {c.id:<{width}}  {c.caption or ''}")
