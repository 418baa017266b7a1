"""Search backends behind one interface: exact search in torch, and FAISS indexes from a factory string.

A backend holds the N×E embeddings of one modality and answers ``search(queries, k, score)`` with the
``k`` best rows of every query, best first:

* :class:`ExactBackend` (``backend="exact"``, no extra dependency): the scores of every row, computed in
  blocks over the memory-mapped embedding shards with torch, and a top-k merge. Ties are broken by row
  number, so results are deterministic. It also computes the order-embedding similarity of VSE++
  order models (``score="order_query_text"`` / ``"order_query_image"``).
* :class:`FaissBackend` (``backend="faiss:<factory>"``, ``pip install 'vsekit[faiss]'``):
  ``faiss.index_factory(E, factory, METRIC_INNER_PRODUCT)``, trained on all rows if it needs training;
  search parameters (``nprobe=16`` for IVF, ``efSearch=64`` for HNSW by default) set with
  ``faiss.ParameterSpace``; saved with ``faiss.write_index`` and read memory-mapped where FAISS allows it.
  Inner product only (cosine for the l2-normalised embeddings of vsekit models).

:func:`recall_at_k` compares an approximate result with the exact one; :func:`measure_recall` measures a
FAISS backend's recall@10 on held-out queries, as a build stores it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vsekit.errors import ConfigError, DataError

__all__ = [
    "SCORES",
    "ExactBackend",
    "FaissBackend",
    "default_search_params",
    "gather_rows",
    "import_faiss",
    "measure_recall",
    "parse_backend",
    "recall_at_k",
]

log = logging.getLogger(__name__)

SCORES: tuple[str, ...] = ("dot", "order_query_text", "order_query_image")
"""How rows are scored: ``dot`` (cosine of normalised embeddings); ``order_query_text``: rows are images
and the queries texts, ``s = -||max(0, text - image)||``; ``order_query_image``: rows are texts and the
queries images."""

RECALL_K = 10
"""The k of the recall that :func:`measure_recall` measures."""

BLOCK_ELEMENTS = 1 << 24
"""Scores (rows × queries) computed at a time by :class:`ExactBackend` (64 MB in float32)."""


def parse_backend(backend: str) -> tuple[str, str | None]:
    """``"exact"`` -> ``("exact", None)``; ``"faiss:IVF256,Flat"`` -> ``("faiss", "IVF256,Flat")``.

    Raises:
        ConfigError: for anything else.
    """
    if backend == "exact":
        return "exact", None
    if isinstance(backend, str) and backend.startswith("faiss:") and backend[len("faiss:") :].strip():
        return "faiss", backend[len("faiss:") :].strip()
    raise ConfigError(f"backend: expected 'exact' or 'faiss:<factory string>' (e.g. faiss:IVF256,Flat), got {backend!r}")


def import_faiss() -> Any:
    """The ``faiss`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise ConfigError("FAISS backends need faiss-cpu: pip install 'vsekit[faiss]'") from None
    return faiss


def default_search_params(factory: str) -> str:
    """The search parameters vsekit sets on a fresh FAISS index: ``nprobe=16`` for IVF indexes,
    ``efSearch=64`` for HNSW indexes, none otherwise."""
    if factory.upper().startswith("IVF") or ",IVF" in factory.upper():
        return "nprobe=16"
    if "HNSW" in factory.upper():
        return "efSearch=64"
    return ""


def recall_at_k(exact: np.ndarray | Sequence[Sequence[int]], approx: np.ndarray | Sequence[Sequence[int]], k: int = 10) -> float:
    """Mean fraction of the exact top-``k`` rows that the approximate top-``k`` also returns.

    Args:
        exact: the exact row numbers of every query, best first (at least ``k``, or all rows when there
            are fewer); -1 pads.
        approx: the approximate row numbers of every query; -1 pads.
        k: the cut-off.

    Returns:
        The recall in [0, 1] (1.0 for no query).
    """
    if len(exact) == 0:
        return 1.0
    total = 0.0
    for e, a in zip(exact, approx):
        want = [int(x) for x in e[:k] if x >= 0]
        if not want:
            total += 1.0
            continue
        got = {int(x) for x in a[:k] if x >= 0}
        total += len(got.intersection(want)) / len(want)
    return total / len(exact)


def gather_rows(shards: Sequence[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted or not) of the concatenation of ``shards``, as one float32 array."""
    offsets = np.cumsum([0] + [len(s) for s in shards])
    rows = np.asarray(rows, dtype=np.int64)
    which = np.searchsorted(offsets, rows, side="right") - 1
    out = np.empty((len(rows), shards[0].shape[1]), dtype=np.float32)
    for s in np.unique(which):
        m = which == s
        out[m] = shards[s][rows[m] - offsets[s]]
    return out


def _as_queries(queries: np.ndarray | torch.Tensor, dim: int) -> torch.Tensor:
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32) if not isinstance(queries, torch.Tensor) else queries)
    q = q.float()
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != dim:
        raise DataError(f"queries: expected B×{dim} embeddings, got shape {tuple(q.shape)}")
    return q


class ExactBackend:
    """Exact top-k over embedding shards (arrays or memory maps), in torch.

    Args:
        shards: N_s×E float32 arrays, concatenated in order (row numbers run across them).
        dim: E (used when there is no shard).
    """

    name = "exact"

    def __init__(self, shards: Sequence[np.ndarray], dim: int) -> None:
        self.dim = int(dim)
        self._shards = [self._tensor(s) for s in shards if len(s)]
        self._offsets = np.cumsum([0] + [len(s) for s in self._shards])
        self.ntotal = int(self._offsets[-1])

    @staticmethod
    def _tensor(arr: np.ndarray) -> torch.Tensor:
        if not arr.flags.writeable:  # torch wants writable memory
            if isinstance(arr, np.memmap) and arr.filename:  # a copy-on-write map of the same file costs nothing
                arr = np.load(arr.filename, mmap_mode="c", allow_pickle=False)
            else:
                arr = np.array(arr)
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    def row(self, i: int) -> np.ndarray:
        """Embedding of row ``i`` (a float32 copy)."""
        s = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self._shards[s][i - int(self._offsets[s])].numpy().copy()

    def _scores(self, rows: torch.Tensor, q: torch.Tensor, score: str) -> torch.Tensor:
        if score == "dot":
            return rows @ q.t()
        from vsekit.models import order_similarity

        if score == "order_query_text":
            return order_similarity(rows, q)
        return order_similarity(q, rows).t()

    @torch.inference_mode()
    def search(self, queries: np.ndarray | torch.Tensor, k: int, score: str = "dot") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows of every query.

        Args:
            queries: B×E query embeddings.
            k: results per query (at most the number of rows are returned).
            score: one of :data:`SCORES`.

        Returns:
            ``(scores, rows)``: B×k' float32 and int64 arrays, best first, ``k' = min(k, N)``.
        """
        if score not in SCORES:
            raise ConfigError(f"score: expected one of {SCORES}, got {score!r}")
        q = _as_queries(queries, self.dim)
        b, k = q.shape[0], min(int(k), self.ntotal)
        if k <= 0 or b == 0:
            return np.zeros((b, 0), np.float32), np.zeros((b, 0), np.int64)
        best_s = torch.full((b, 0), float("-inf"))
        best_i = torch.zeros((b, 0), dtype=torch.int64)
        step = max(k, BLOCK_ELEMENTS // max(1, b))
        for shard, offset in zip(self._shards, self._offsets):
            for a in range(0, shard.shape[0], step):
                s = self._scores(shard[a : a + step], q, score).t()  # B×n
                kk = min(k, s.shape[1])
                top_s, top_i = torch.topk(s, kk, dim=1)
                if bool(((s >= top_s[:, -1:]).sum(dim=1) > kk).any()):
                    # ties at the cut: topk may keep any of them; a stable sort keeps the lowest rows
                    top_s, top_i = (t[:, :kk] for t in torch.sort(s, dim=1, descending=True, stable=True))
                by_row = torch.argsort(top_i, dim=1)  # equal scores in row order, then a stable merge keeps it
                top_s, top_i = torch.gather(top_s, 1, by_row), torch.gather(top_i, 1, by_row)
                cand_s = torch.cat([best_s, top_s], dim=1)
                cand_i = torch.cat([best_i, top_i + int(offset) + a], dim=1)
                keep_s, pos = torch.sort(cand_s, dim=1, descending=True, stable=True)
                best_s, best_i = keep_s[:, :k], torch.gather(cand_i, 1, pos[:, :k])
        scores, rows = best_s.numpy(), best_i.numpy()
        order = np.lexsort((rows, -scores), axis=-1)  # best first, ties by row number
        return np.take_along_axis(scores, order, 1).astype(np.float32), np.take_along_axis(rows, order, 1)


class FaissBackend:
    """A FAISS index over the rows of one modality (inner product).

    Build with :meth:`build`, or read a saved one with :meth:`load`.

    Args:
        index: the ``faiss.Index``.
        factory: the factory string it was built from.
        search_params: ``faiss.ParameterSpace`` parameters set on it (``"nprobe=16"``).
    """

    name = "faiss"

    def __init__(self, index: Any, factory: str, search_params: str = "") -> None:
        self.index = index
        self.factory = factory
        self.search_params = search_params
        self.dim = int(index.d)
        self.ntotal = int(index.ntotal)
        if search_params:
            faiss = import_faiss()
            try:
                faiss.ParameterSpace().set_index_parameters(index, search_params)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
                raise ConfigError(f"search_params: {search_params!r} does not apply to faiss:{factory} ({first})") from None

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray | Sequence[np.ndarray],
        factory: str,
        search_params: str | None = None,
        max_train: int = 1 << 18,
        seed: int = 0,
    ) -> FaissBackend:
        """Build, train (when the index type needs it) and fill an index.

        Args:
            embeddings: N×E float32 rows, or a sequence of such shards (added in order).
            factory: a ``faiss.index_factory`` string, e.g. ``"IVF256,Flat"``, ``"HNSW32"``, ``"Flat"``.
            search_params: parameters to set (default :func:`default_search_params`).
            max_train: the most rows used for training (a random sample when there are more).
            seed: seed of that sample.

        Raises:
            ConfigError: if the factory string is invalid or the index cannot be trained on N rows.
        """
        faiss = import_faiss()
        shards = [embeddings] if isinstance(embeddings, np.ndarray) else list(embeddings)
        shards = [s for s in shards if len(s)]
        if not shards:
            raise DataError("FAISS backend: no vectors to index")
        dim, total = int(shards[0].shape[1]), sum(len(s) for s in shards)
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            raise ConfigError(f"backend: faiss:{factory} is not a valid FAISS factory string ({first})") from None
        if not index.is_trained:
            nlist = int(getattr(faiss.extract_index_ivf(index), "nlist", 0)) if "IVF" in factory.upper() else 0
            if total < max(nlist, 1):
                raise ConfigError(
                    f"backend: faiss:{factory} needs at least {max(nlist, 1)} vectors to train, the collection has "
                    f"{total}; use fewer lists (e.g. faiss:IVF{max(1, total // 39)},Flat) or the exact backend"
                )
            rows = np.arange(total)
            if total > max_train:
                rows = np.sort(np.random.default_rng(seed).choice(total, max_train, replace=False))
            train = gather_rows(shards, rows)
            try:
                index.train(train)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
                raise ConfigError(f"backend: cannot train faiss:{factory} on {total} vectors ({first})") from None
            del train
        for s in shards:
            index.add(np.ascontiguousarray(s, dtype=np.float32))
        params = default_search_params(factory) if search_params is None else search_params
        return cls(index, factory, params)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index atomically (temporary file + rename)."""
        from vsekit.io import atomic_write

        faiss = import_faiss()
        path = Path(path)
        # faiss writes to a file name; serialise to bytes and write those atomically
        return atomic_write(path, lambda f: f.write(faiss.serialize_index(self.index).tobytes()))

    @classmethod
    def load(cls, path: str | os.PathLike, factory: str, search_params: str = "") -> FaissBackend:
        """Read a saved index, memory-mapped where the index type supports it.

        Raises:
            DataError: if the file is missing or not readable by this FAISS build.
        """
        faiss = import_faiss()
        path = str(path)
        if not os.path.isfile(path):
            raise DataError(f"FAISS index file not found: {path}")
        try:
            index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            try:  # index types without mmap support are read into memory
                index = faiss.read_index(path)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
                raise DataError(f"{path}: not a FAISS index readable here ({first})") from None
        return cls(index, factory, search_params)

    def search(self, queries: np.ndarray | torch.Tensor, k: int, score: str = "dot") -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows of every query (inner product), best first; same return as
        :meth:`ExactBackend.search`."""
        if score != "dot":
            raise ConfigError("FAISS backends score by inner product only; order-embedding models need backend=exact")
        q = _as_queries(queries, self.dim).numpy()
        k = min(int(k), self.ntotal)
        if k <= 0 or len(q) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scores, rows = self.index.search(np.ascontiguousarray(q), k)
        return scores.astype(np.float32), rows.astype(np.int64)


def measure_recall(
    part_shards: list[np.ndarray], other_shards: list[np.ndarray], faiss_backend: FaissBackend, dim: int, n_queries: int
) -> dict[str, Any]:
    """Recall@10 of ``faiss_backend`` against exact search, on held-out queries: embeddings of the other
    modality when it has at least 100 items (the cross-modal queries the index serves), else items of the
    index itself with the item left out of both rankings ("search with this result")."""
    exact = ExactBackend(part_shards, dim)
    other_n = sum(len(s) for s in other_shards)
    rng = np.random.default_rng(0)
    if other_n >= 100:
        rows = np.sort(rng.choice(other_n, min(n_queries, other_n), replace=False))
        q = gather_rows(other_shards, rows)
        _, e = exact.search(q, RECALL_K)
        _, a = faiss_backend.search(q, RECALL_K)
        kind = "other modality"
    else:
        n = exact.ntotal
        rows = np.sort(rng.choice(n, min(n_queries, n), replace=False))
        q = gather_rows(part_shards, rows)
        _, e = exact.search(q, RECALL_K + 1)
        _, a = faiss_backend.search(q, RECALL_K + 1)
        e = [[x for x in r if x != own][:RECALL_K] for r, own in zip(e.tolist(), rows.tolist())]
        a = [[x for x in r if x != own][:RECALL_K] for r, own in zip(a.tolist(), rows.tolist())]
        kind = "indexed items (self excluded)"
    return {"recall_at_10": round(float(recall_at_k(e, a, RECALL_K)), 4), "queries": len(rows), "query_kind": kind}
