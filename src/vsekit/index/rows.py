"""Rows of the embedding shards read from disk in pieces, for indexes bigger than the memory a build may use.

An index stores its embeddings as float32 ``.npy`` shards and opens them memory-mapped. Pages of a memory map
that a process touched count in its resident set (RSS) for as long as the map lives, so one pass over the
shards of a million 1024-d items through ``np.memmap`` makes a 4 GB process, although the kernel could drop
every page. :class:`ShardRows` reads the same rows with ``os.preadv`` instead: the bytes go through the page
cache (shared and reclaimable, not the process's) into a buffer of the size asked for, so streaming every row
for a FAISS ``add``, a training sample or the exact re-ranking of a short list costs only that buffer.

* :meth:`ShardRows.chunks`: every row in order, in chunks that never cross a shard;
* :meth:`ShardRows.gather`: rows by number, in the order asked (the runs of consecutive rows are read at once);
* :func:`exact_topk`: the exact top-k of queries over all rows, streamed chunk by chunk, with the results
  (and the tie order: equal scores by row number) of :class:`vsekit.index.backends.ExactBackend`;
* :class:`RerankedBackend`: a FAISS index whose ``rerank × max(k, 11)`` candidates are scored again exactly with
  their rows read from disk (what ``faiss.IndexRefineFlat`` does with a copy of every vector in memory).

Shards that are not whole ``.npy`` memory maps (arrays in memory, slices of a map) are read by indexing them.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from vsekit.errors import DataError
from vsekit.index.backends import RECALL_K, ExactBackend, FaissBackend

__all__ = ["CHUNK_ROWS", "MIN_SHORTLIST_K", "RerankedBackend", "ShardRows", "exact_topk", "rescore"]

CHUNK_ROWS = 16384
"""Rows per chunk of :meth:`ShardRows.chunks` by default (64 MB at E = 1024)."""
MIN_SHORTLIST_K = RECALL_K + 1
""":class:`RerankedBackend` re-scores ``rerank × max(k, 11)`` candidates: for fewer than 11 results, as many as
the recall@10 of its setting was measured with (10 results and the query's own row)."""


class _FileShard:
    """One ``.npy`` memory map, read with ``os.preadv`` from its file."""

    def __init__(self, arr: np.memmap) -> None:
        self.path = str(arr.filename)
        self.offset = int(arr.offset)
        self.n, self.dim = int(arr.shape[0]), int(arr.shape[1])
        self.row_bytes = self.dim * 4
        self.fd = os.open(self.path, os.O_RDONLY)

    def __del__(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)

    def read(self, a: int, b: int, out: np.ndarray) -> None:
        """Rows ``a:b`` into ``out`` (a C-contiguous float32 (b - a)×E array)."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, done = self.offset + a * self.row_bytes, 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], pos + done)
            if got <= 0:
                raise DataError(f"{self.path}: ended before row {b} (the embedding shard is truncated)")
            done += got


class _ArrayShard:
    """One shard held as an array (or a view of a map): read by indexing it."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.n, self.dim = int(arr.shape[0]), int(arr.shape[1])

    def read(self, a: int, b: int, out: np.ndarray) -> None:
        out[...] = self.arr[a:b]


def _is_whole_map(arr: np.ndarray) -> bool:
    """True for a C-ordered float32 map of a whole ``.npy`` file (what ``np.load(mmap_mode=...)`` returns)."""
    return (
        isinstance(arr, np.memmap) and isinstance(arr.base, mmap.mmap) and bool(arr.filename)
        and arr.dtype == np.float32 and arr.flags.c_contiguous
    )  # fmt: skip


class ShardRows:
    """The rows of N×E float32 shards, numbered across them in order, read without mapping them.

    Args:
        shards: the shards (memory maps of ``.npy`` files are read from their files; other arrays by indexing).
        dim: E (used when there is no shard).
    """

    def __init__(self, shards: Sequence[np.ndarray], dim: int) -> None:
        self.dim = int(dim)
        self._shards = [_FileShard(s) if _is_whole_map(s) else _ArrayShard(s) for s in shards if len(s)]
        for s in self._shards:
            if s.dim != self.dim:
                raise DataError(f"embedding shards: expected {self.dim} columns, a shard has {s.dim}")
        self._offsets = np.cumsum([0] + [s.n for s in self._shards])
        self.ntotal = int(self._offsets[-1])

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, rows)`` for every row in order, at most ``size`` rows at a time and never across shards.
        Each chunk is a new array (the caller may keep it)."""
        for shard, offset in zip(self._shards, self._offsets):
            for a in range(0, shard.n, size):
                b = min(shard.n, a + size)
                out = np.empty((b - a, self.dim), dtype=np.float32)
                shard.read(a, b, out)
                yield int(offset) + a, out

    def gather(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """Rows ``rows`` (in any order, repeats allowed) as one float32 len(rows)×E array, in that order.

        Raises:
            DataError: for a row outside ``0 .. ntotal - 1``.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        if rows.min() < 0 or rows.max() >= self.ntotal:
            raise DataError(f"rows: expected row numbers in 0..{self.ntotal - 1}, got {int(rows.min())}..{int(rows.max())}")
        wanted = np.unique(rows)  # sorted, each once
        which = np.searchsorted(self._offsets, wanted, side="right") - 1
        local = wanted - self._offsets[which]
        buf = np.empty((len(wanted), self.dim), dtype=np.float32)
        if all(isinstance(s, _ArrayShard) for s in self._shards):
            for s in np.unique(which).tolist():
                buf[which == s] = self._shards[s].arr[local[which == s]]
        else:  # runs of consecutive rows inside one shard are read with one call, straight into the buffer
            breaks = np.flatnonzero((np.diff(wanted) != 1) | (np.diff(which) != 0)) + 1
            lows, highs = np.r_[0, breaks].tolist(), np.r_[breaks, len(wanted)].tolist()
            for lo, hi, s, a in zip(lows, highs, which[lows].tolist(), local[lows].tolist()):
                self._shards[s].read(a, a + hi - lo, buf[lo:hi])
        return buf if len(wanted) == len(rows) and bool((wanted == rows).all()) else buf[np.searchsorted(wanted, rows)]


def exact_topk(rows: ShardRows, queries: np.ndarray, k: int, chunk: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` best rows (inner product) of every query over all rows of ``rows``, best first, equal
    scores in row order: ``ExactBackend(shards).search(queries, k)`` computed one chunk at a time.

    Returns:
        ``(scores, rows)``: B×k' float32 and int64 arrays, ``k' = min(k, N)``.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    b, k = len(queries), min(int(k), rows.ntotal)
    best_s = np.zeros((b, 0), np.float32)
    best_i = np.zeros((b, 0), np.int64)
    for first, block in rows.chunks(chunk):
        s, i = ExactBackend([block], rows.dim).search(queries, k)
        cand_s, cand_i = np.concatenate([best_s, s], axis=1), np.concatenate([best_i, i + first], axis=1)
        order = np.lexsort((cand_i, -cand_s), axis=-1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_s, best_i


def rescore(vectors: np.ndarray, cand: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of the candidate rows ``cand`` (their float32 ``vectors``) for one query by exact inner
    product: ``(scores, rows)``, best first, equal scores in row order."""
    scores = vectors @ query
    order = np.lexsort((cand, -scores))[:k]
    return scores[order].astype(np.float32), cand[order].astype(np.int64)


class RerankedBackend:
    """A FAISS index re-ranked exactly: for ``k`` results it asks FAISS for ``rerank × max(k, 11)`` candidates
    (:data:`MIN_SHORTLIST_K`), reads their float32 rows from the shards (:class:`ShardRows`, so the process
    holds only those rows) and returns the ``k`` best by exact inner product, with exact scores.

    Args:
        inner: the FAISS backend (its search parameters already set).
        rows: the rows it indexes, read from disk.
        rerank: the factor (1: the candidates FAISS returns are only re-sorted by their exact scores).
    """

    name = "faiss"

    def __init__(self, inner: FaissBackend, rows: ShardRows, rerank: int) -> None:
        if rows.ntotal != inner.ntotal or rows.dim != inner.dim:
            raise DataError(f"re-ranking: the FAISS index holds {inner.ntotal}×{inner.dim}, the shards {rows.ntotal}×{rows.dim}")
        self.inner, self.rows, self.rerank = inner, rows, max(1, int(rerank))
        self.index, self.factory, self.search_params = inner.index, inner.factory, inner.search_params
        self.dim, self.ntotal = inner.dim, inner.ntotal

    def search(self, queries: np.ndarray | torch.Tensor, k: int, score: str = "dot") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows of every query, best first; same return as :meth:`ExactBackend.search`
        (rows of -1 and scores of -inf pad a query with fewer candidates)."""
        q = queries.detach().cpu().numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries)
        q = np.ascontiguousarray(q[None] if q.ndim == 1 else q, dtype=np.float32)
        _, cand = self.inner.search(q, max(int(k), MIN_SHORTLIST_K) * self.rerank, score)
        k = min(int(k), self.ntotal)
        scores = np.full((len(q), max(k, 0)), -np.inf, np.float32)
        rows = np.full((len(q), max(k, 0)), -1, np.int64)
        for i in range(len(q) if k > 0 else 0):
            c = cand[i][cand[i] >= 0]
            s, r = rescore(self.rows.gather(c), c, q[i], k)
            scores[i, : len(r)], rows[i, : len(r)] = s, r
        return scores, rows
