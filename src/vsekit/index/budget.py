"""``backend="faiss:auto"``: a FAISS index chosen from a memory budget and a recall target.

The idea of autofaiss, for collections past the memory a process may use: from the number of rows N, the
dimension E and ``max_index_memory``, :func:`candidates` lists IVF-PQ indexes (``IVF{nlist},PQ{m}x{bits}np``,
then the same with an ``OPQ{m}`` rotation; ``np``: no polysemous training, which only serves a filter vsekit does
not use and costs more than the rest of the training), the fewest bytes first; the candidates whose estimated memory
(:meth:`Candidate.index_bytes` plus the build's buffers, :func:`work_bytes`, plus :data:`PROCESS_HEADROOM` for
the process itself) exceeds the budget are dropped: ``max_index_memory`` bounds the resident memory of the
process that builds and searches the index (not counting the model that embeds the collection).
:func:`build_auto` then, for each candidate in that order:

1. trains it on a sample of rows (:func:`train_rows` of them, read from the shards; the coarse k-means is
   trained once and shared by the candidates without a rotation) and adds every row in chunks streamed
   from the shards (:class:`vsekit.index.rows.ShardRows`): all N×E embeddings are never in memory at once;
2. measures, on held-out queries, the recall@10 of every search setting: ``nprobe`` (1, 2, 4, ... up to
   min(nlist, 256)) times ``rerank`` (1, 2, 5, 10, 20, 50): FAISS returns ``k × rerank`` candidates, which
   are scored again exactly with their float32 rows read from the shards on disk, and the best ``k`` kept
   (:class:`vsekit.index.rows.RerankedBackend`). The queries are ``settings.queries`` rows of the collection
   itself (a seeded random sample), each left out of its own ranking (exact and approximate search for
   k + 1 rows, the query's row dropped); the truth is exact search streamed over the shards;
3. keeps the setting with the lowest :func:`query_cost` (bytes a query reads) whose recall reaches
   ``min_recall``, measures its recall once more through the backend that will serve it, and stops.

So the index chosen is the smallest one in memory that reaches the target (then the cheapest way to search
it). If no candidate reaches it, the build stops with a one-line :class:`ConfigError` naming the best recall
reached and where (nothing is committed; the embeddings stay in ``pending/`` for the next build). Below
:data:`MIN_IVF_ROWS` rows the only candidate is ``Flat`` (exact inner product, N·E·4 bytes).

``index.json`` records for the part: the chosen ``factory``, ``search_params`` (``nprobe=...``), ``rerank``,
the measured ``recall`` and ``auto``: the budget, the target, the estimated bytes, the sample sizes and every
candidate tried with the best recall it reached.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsekit.errors import ConfigError
from vsekit.index.backends import BLOCK_ELEMENTS, RECALL_K, FaissBackend, import_faiss, recall_at_k
from vsekit.index.rows import CHUNK_ROWS, RerankedBackend, ShardRows, exact_topk, rescore
from vsekit.io import atomic_write

__all__ = [
    "AUTO", "DEFAULT_MAX_INDEX_MEMORY", "DEFAULT_MIN_RECALL", "MIN_IVF_ROWS", "PQ_TABLE_BYTES", "PROCESS_HEADROOM",
    "RERANKS", "AutoSettings", "Candidate", "add_rows", "auto_settings", "build_auto", "candidates", "coarse_lists",
    "estimate", "format_size", "parse_size", "query_cost", "same_budget", "train_rows", "work_bytes",
]  # fmt: skip

log = logging.getLogger("vsekit.index")

AUTO = "auto"
"""The factory of ``backend="faiss:auto"``."""
DEFAULT_MAX_INDEX_MEMORY = 2 << 30
"""``max_index_memory`` when none is given: 2 GiB."""
DEFAULT_MIN_RECALL = 0.9
"""``min_recall`` when none is given."""
MIN_IVF_ROWS = 1000
"""Fewer rows than this make a ``Flat`` index (nothing to gain from IVF-PQ)."""
RERANKS = (1, 2, 5, 10, 20, 50)
"""The re-ranking factors tried: FAISS returns ``k × rerank`` candidates, re-scored exactly from disk."""
MAX_NPROBE = 256
"""The most inverted lists probed by a setting tried."""
TRAIN_PER_LIST = 64
"""Training rows per coarse list (at least :data:`MIN_TRAIN` rows, at most all)."""
MIN_TRAIN = 1 << 16
PQ_TABLE_BYTES = 64 << 20
"""The most memory of the distance tables FAISS makes to encode a batch of rows: a product quantizer with
sub-vectors of 16 dimensions or more encodes ``n`` rows with an ``n × 2^bits × m`` float table (1 GiB for
16,384 rows of PQ64x8), so rows are added in batches sized to keep it under this."""
PROCESS_HEADROOM = 512 << 20
"""Memory kept out of ``max_index_memory`` for the process itself: Python, numpy, torch and FAISS (about
240 MB resident once imported) and the slack of the allocators. The model that embeds a collection is not
counted. (:func:`estimate` errs high: building the 1M × 1024 benchmark's index took 600 MB over the imports, for
an estimate of 1,017 MB.)"""
UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*$", re.I)


def parse_size(value: Any, name: str = "max_index_memory") -> int:
    """Bytes from an int or a string like ``"2GB"``, ``"512MB"``, ``"1.5G"``, ``"2GiB"`` or ``"1000000"``.
    The units are powers of 1024 (as in autofaiss): ``2GB`` = ``2GiB`` = 2 × 1024³ bytes.

    Raises:
        ConfigError: naming the option, for anything else (or a size under 1 MB).
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        size = int(value)
    else:
        m = SIZE.match(value) if isinstance(value, str) else None
        if m is None or (m.group(3) and m.group(3).upper() == "IB" and not m.group(2)):
            raise ConfigError(f"{name}: expected a size such as 2GB, 512MB or a number of bytes, got {value!r}")
        size = int(float(m.group(1)) * UNITS[m.group(2).upper()])
    if size < 1 << 20:
        raise ConfigError(f"{name}: expected at least 1MB, got {value!r}")
    return size


def format_size(n: int) -> str:
    """``2147483648`` -> ``"2.00 GiB"``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class AutoSettings:
    """What ``faiss:auto`` chooses from: the memory budget in bytes, the recall@10 target, the number of
    held-out queries and the seed of the samples."""

    max_index_memory: int
    min_recall: float
    queries: int
    seed: int = 0


def auto_settings(max_index_memory: Any, min_recall: Any, queries: int) -> AutoSettings:
    """The checked :class:`AutoSettings` (None: :data:`DEFAULT_MAX_INDEX_MEMORY`, :data:`DEFAULT_MIN_RECALL`).

    Raises:
        ConfigError: for a size that :func:`parse_size` refuses or a recall outside (0, 1].
    """
    budget = parse_size(DEFAULT_MAX_INDEX_MEMORY if max_index_memory is None else max_index_memory)
    recall = DEFAULT_MIN_RECALL if min_recall is None else min_recall
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0 < recall <= 1:
        raise ConfigError(f"min_recall: expected a recall@10 in (0, 1], got {min_recall!r}")
    return AutoSettings(budget, float(recall), int(queries))


def same_budget(entry: dict[str, Any], settings: AutoSettings) -> bool:
    """True if the part ``entry`` of index.json was chosen by ``faiss:auto`` under the same budget and target."""
    auto = entry.get("auto") or {}
    return auto.get("max_index_memory") == settings.max_index_memory and auto.get("min_recall") == settings.min_recall


@dataclass(frozen=True)
class Candidate:
    """One index ``faiss:auto`` may build: ``IVF{nlist},PQ{m}x{bits}np`` (``OPQ{m},`` first if ``opq``), or
    ``Flat`` (``nlist = 0``)."""

    nlist: int
    m: int
    bits: int
    opq: bool

    @property
    def factory(self) -> str:
        if self.nlist == 0:
            return "Flat"
        return f"{'OPQ%d,' % self.m if self.opq else ''}IVF{self.nlist},PQ{self.m}x{self.bits}np"

    def index_bytes(self, n: int, dim: int) -> int:
        """Estimated memory of the index at its largest (while rows are added): FAISS grows each list's codes
        and ids (8 bytes a row) as a vector that may hold twice its size, so 2·N·(code + 8) bytes, plus the
        coarse centroids (nlist·E·4), the PQ codebooks (2^bits·E·4) and the rotation (E²·4) of OPQ. A Flat
        index: 2·N·E·4."""
        if self.nlist == 0:
            return 2 * n * dim * 4
        code = math.ceil(self.m * self.bits / 8)
        return 2 * n * (code + 8) + self.nlist * dim * 4 + (1 << self.bits) * dim * 4 + (dim * dim * 4 if self.opq else 0)


def coarse_lists(n: int) -> int:
    """The number of inverted lists for N rows: the power of two nearest sqrt(N), at most N / 39 (the rows
    FAISS's k-means wants per centroid)."""
    nlist = 1 << max(0, round(math.log2(math.sqrt(max(n, 1)))))
    while nlist > 1 and nlist > n // 39:
        nlist //= 2
    return nlist


def train_rows(n: int, nlist: int, dim: int, budget: int) -> int:
    """Rows of the training sample: ``max(64·nlist, 65,536)``, at most N, and at most what makes the sample
    (twice over: FAISS copies it) a quarter of the budget, but never under ``39·nlist`` rows."""
    rows = min(n, max(TRAIN_PER_LIST * nlist, MIN_TRAIN))
    return max(min(rows, budget // (4 * 2 * dim * 4)), min(n, 39 * nlist))


def work_bytes(n: int, dim: int, train: int, queries: int, opq: bool = False) -> int:
    """Memory of a build besides the index: the training sample twice (FAISS copies it), three chunks of
    ``min(N, CHUNK_ROWS)`` rows being added (the rows, their rotation, their residuals), the block of exact
    scores (chunk rows × held-out queries, at most ``BLOCK_ELEMENTS``) of the exact search the recall is measured
    against, FAISS's encoding tables (:data:`PQ_TABLE_BYTES`); with ``opq``, four more copies of the (at most
    65,536) rows FAISS trains the rotation on."""
    chunk = min(n, CHUNK_ROWS)
    rotation = 4 * min(train, 1 << 16) * dim * 4 if opq else 0
    scores = 4 * min(BLOCK_ELEMENTS, chunk * min(n, queries))
    return 2 * train * dim * 4 + 3 * chunk * dim * 4 + scores + PQ_TABLE_BYTES + rotation


def estimate(c: Candidate, n: int, dim: int, train: int, queries: int) -> int:
    """The memory budgeted for building candidate ``c``: :meth:`Candidate.index_bytes` + :func:`work_bytes`."""
    return c.index_bytes(n, dim) + work_bytes(n, dim, train, queries, c.opq)


def candidates(n: int, dim: int) -> list[Candidate]:
    """The indexes ``faiss:auto`` tries for N rows of dimension E, the smallest first: ``Flat`` below
    :data:`MIN_IVF_ROWS` rows, else IVF-PQ with every ``m`` dividing E into sub-vectors of 2 to 32 dimensions,
    each without then with OPQ. Codes have 8 bits when the sample holds the 39·256 rows FAISS's k-means wants
    for 256 centroids, fewer (at least 4) for smaller collections."""
    if n < MIN_IVF_ROWS:
        return [Candidate(0, 0, 0, False)]
    nlist = coarse_lists(n)
    bits = int(min(8, max(4, math.floor(math.log2(n / 39)))))
    ms = sorted(m for m in range(1, dim + 1) if dim % m == 0 and 2 <= dim // m <= 32)
    out = [Candidate(nlist, m, bits, opq) for m in ms for opq in (False, True)]
    return sorted(out, key=lambda c: (c.index_bytes(n, dim), c.opq))


def query_cost(c: Candidate, n: int, dim: int, nprobe: int, rerank: int, k: int = RECALL_K) -> int:
    """Bytes one query reads: the coarse centroids (and the rotation), the codes of ``nprobe`` lists of about
    N / nlist rows, and the ``k × rerank`` float32 rows re-scored; a Flat index reads every row."""
    if c.nlist == 0:
        return n * dim * 4
    codes = nprobe * math.ceil(n / c.nlist) * math.ceil(c.m * c.bits / 8)
    return c.nlist * dim * 4 + (dim * dim * 4 if c.opq else 0) + codes + k * rerank * dim * 4


def add_rows(c: Candidate, dim: int) -> int:
    """Rows given to one FAISS ``add`` call: :data:`CHUNK_ROWS`, fewer where encoding them would make a
    distance table larger than :data:`PQ_TABLE_BYTES` (sub-vectors of 16 dimensions or more)."""
    if c.nlist == 0 or dim // c.m < 16:
        return CHUNK_ROWS
    return max(1, min(CHUNK_ROWS, PQ_TABLE_BYTES // ((1 << c.bits) * c.m * 4)))


def _faiss_error(e: RuntimeError) -> str:
    text = str(e).strip()
    return text.splitlines()[-1][:200] if text else type(e).__name__


def _train_and_fill(c: Candidate, dim: int, sample: np.ndarray, rows: ShardRows, centroids: np.ndarray | None) -> Any:
    """Candidate ``c`` trained on ``sample`` (its coarse quantizer given by ``centroids`` when not None and
    it has no rotation) and holding every row of ``rows``, added chunk by chunk."""
    faiss = import_faiss()
    index = faiss.index_factory(dim, c.factory, faiss.METRIC_INNER_PRODUCT)
    if c.nlist and not c.opq and centroids is not None:
        faiss.extract_index_ivf(index).quantizer.add(centroids)  # trained: FAISS skips the coarse k-means
    step = add_rows(c, dim)
    try:
        if not index.is_trained:
            index.train(sample)
        for _, chunk in rows.chunks(CHUNK_ROWS):
            for a in range(0, len(chunk), step):
                index.add(chunk[a : a + step])
    except RuntimeError as e:
        raise ConfigError(f"backend: faiss:auto could not build {c.factory} on {rows.ntotal} rows ({_faiss_error(e)})") from None
    return index


def _truth(rows: ShardRows, settings: AutoSettings) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """The held-out queries (rows of the collection), their row numbers and their exact top 10 with the
    query's own row left out."""
    n = rows.ntotal
    picked = np.sort(np.random.default_rng(settings.seed).choice(n, min(settings.queries, n), replace=False))
    queries = rows.gather(picked)
    _, top = exact_topk(rows, queries, RECALL_K + 1)
    return queries, picked, _drop_self(top, picked)


def _drop_self(top: np.ndarray | list[list[int]], own: np.ndarray) -> list[list[int]]:
    top = top.tolist() if isinstance(top, np.ndarray) else top
    return [[int(x) for x in r if x != o and x >= 0][:RECALL_K] for r, o in zip(top, own.tolist())]


def _recall(index: Any, rows: ShardRows, data: tuple[np.ndarray, np.ndarray, list[list[int]]], rerank: int) -> float:
    """Recall@10 at the index's current ``nprobe`` and factor ``rerank``, searched as :class:`RerankedBackend`
    searches (one FAISS search for ``11 × rerank`` candidates, re-scored exactly)."""
    queries, own, truth = data
    kk = RECALL_K + 1
    _, short = index.search(queries, kk * rerank)
    found = []
    for i in range(len(queries)):
        cand = short[i][short[i] >= 0]
        found.append(rescore(rows.gather(cand), cand, queries[i], kk)[1].tolist())
    return recall_at_k(truth, _drop_self(found, own), RECALL_K)


def _tune(index: Any, c: Candidate, rows: ShardRows, data: tuple[np.ndarray, np.ndarray, list[list[int]]], target: float) -> dict[str, Any]:
    """The cheapest setting (:func:`query_cost`) of candidate ``c`` whose recall reaches ``target`` (``"ok"``),
    else the setting of its best recall.

    At each ``nprobe`` the largest factor is measured first: if even it misses the target, the smaller ones
    (whose short lists are its prefixes) are skipped, and ``nprobe`` stops growing once doubling it gains less
    than 0.002; else the factors are measured from the smallest up to the first that reaches the target.
    Settings that cost more than the cheapest one found are not measured."""
    n, dim = rows.ntotal, rows.dim
    best: dict[str, Any] = {"ok": False, "recall": -1.0, "nprobe": None, "rerank": None}
    nprobe, last = 1, -1.0
    while nprobe <= min(c.nlist, MAX_NPROBE):
        import_faiss().ParameterSpace().set_index_parameters(index, f"nprobe={nprobe}")
        top = _recall(index, rows, data, RERANKS[-1])
        if top < target:
            if top > best["recall"]:
                best = {"ok": False, "recall": top, "nprobe": nprobe, "rerank": RERANKS[-1]}
            if top < last + 0.002:
                break  # more lists no longer help
            last, nprobe = top, nprobe * 2
            continue
        for r in RERANKS:
            cost = query_cost(c, n, dim, nprobe, r)
            if best["ok"] and cost >= best["cost"]:
                break  # this factor and the larger ones cost more than the cheapest setting found
            rec = top if r == RERANKS[-1] else _recall(index, rows, data, r)
            if rec >= target:
                best = {"ok": True, "recall": rec, "nprobe": nprobe, "rerank": r, "cost": cost}
                break  # larger factors only cost more at this nprobe
        if query_cost(c, n, dim, nprobe * 2, RERANKS[0]) >= best["cost"]:
            break  # more lists cost more than the cheapest setting found, whatever the factor
        last, nprobe = top, nprobe * 2
    return best


def _save(index: Any, path: Path) -> None:
    """Write a FAISS index atomically, streamed to the file (no copy of it in memory)."""
    faiss = import_faiss()
    atomic_write(path, lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write)))


def _flat(rows: ShardRows, data: tuple[np.ndarray, np.ndarray, list[list[int]]]) -> tuple[Any, dict[str, Any]]:
    index = _train_and_fill(Candidate(0, 0, 0, False), rows.dim, np.zeros((0, rows.dim), np.float32), rows, None)
    return index, {"ok": True, "recall": 1.0, "nprobe": None, "rerank": None}


def build_auto(shards: list[np.ndarray], dim: int, settings: AutoSettings, path: str | os.PathLike, what: str = "rows") -> dict[str, Any]:
    """Choose, build and save (to ``path``) the ``faiss:auto`` index of the rows of ``shards`` (see the module
    docstring); ``what`` names them in messages (``"images"``, ``"texts"``).

    Returns:
        The part's index.json entries: ``factory``, ``search_params``, ``rerank``, ``recall`` and ``auto``.

    Raises:
        ConfigError: if no candidate fits the budget, or none reaches ``min_recall`` (one line each).
    """
    start = time.perf_counter()
    rows = ShardRows(shards, dim)
    n = rows.ntotal
    nlist = coarse_lists(n)
    train = train_rows(n, nlist, dim, settings.max_index_memory) if n >= MIN_IVF_ROWS else 0
    listed = candidates(n, dim)
    fit = [c for c in listed if estimate(c, n, dim, train, settings.queries) + PROCESS_HEADROOM <= settings.max_index_memory]
    if not fit:
        need = estimate(listed[0], n, dim, train, settings.queries) + PROCESS_HEADROOM
        raise ConfigError(
            f"max_index_memory: {format_size(settings.max_index_memory)} is too small for faiss:auto on {n} {what} "
            f"of dimension {dim}: the smallest index, {listed[0].factory}, needs about {format_size(need)}"
        )
    data = _truth(rows, settings)
    tried: list[dict[str, Any]] = []
    chosen = _choose(fit, rows, settings, data, train, tried, what)
    c, index, best = chosen
    backend: Any = FaissBackend(index, c.factory, f"nprobe={best['nprobe']}" if best["nprobe"] else "")
    if best["rerank"]:
        backend = RerankedBackend(backend, rows, best["rerank"])
    _, found = backend.search(data[0], RECALL_K + 1)
    recall = round(float(recall_at_k(data[2], _drop_self(found, data[1]), RECALL_K)), 4)
    _save(index, Path(path))
    auto = {"max_index_memory": settings.max_index_memory, "min_recall": settings.min_recall,
            "estimated_bytes": estimate(c, n, dim, train, settings.queries), "process_headroom": PROCESS_HEADROOM, "train_rows": train,
            "query_seed": settings.seed, "tried": tried, "seconds": round(time.perf_counter() - start, 3)}  # fmt: skip
    log.info("faiss:auto on %d %s: %s %s rerank=%s, recall@10 %.4f", n, what, c.factory, backend.search_params, best["rerank"], recall)
    return {
        "factory": c.factory, "search_params": backend.search_params, "rerank": best["rerank"],
        "recall": {"recall_at_10": recall, "queries": len(data[1]), "query_kind": "indexed items (self excluded)"},
        "auto": auto,
    }  # fmt: skip


def _choose(
    fit: list[Candidate], rows: ShardRows, settings: AutoSettings, data: tuple[np.ndarray, np.ndarray, list[list[int]]],
    train: int, tried: list[dict[str, Any]], what: str,
) -> tuple[Candidate, Any, dict[str, Any]]:  # fmt: skip
    """The first candidate of ``fit`` that reaches the target, built, with its setting; every candidate tried is
    appended to ``tried``. Raises the one-line :class:`ConfigError` when none reaches it."""
    n, dim = rows.ntotal, rows.dim
    if fit[0].nlist == 0:
        index, best = _flat(rows, data)
        tried.append({"factory": "Flat", "estimated_bytes": estimate(fit[0], n, dim, train, settings.queries), "best_recall": 1.0})
        return fit[0], index, best
    picked = np.sort(np.random.default_rng(settings.seed + 1).choice(n, train, replace=False))
    sample, centroids = rows.gather(picked), None
    scored = ShardRows([sample], dim) if train == n else rows  # a sample of every row: re-score from it, in memory
    faiss = import_faiss()
    overall: tuple[Candidate, dict[str, Any]] | None = None
    for c in fit:
        t = time.perf_counter()
        index = _train_and_fill(c, dim, sample, rows, centroids)
        if not c.opq and centroids is None:
            centroids = faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, c.nlist)
        built = time.perf_counter() - t
        best = _tune(index, c, scored, data, settings.min_recall)
        tried.append({"factory": c.factory, "estimated_bytes": estimate(c, n, dim, train, settings.queries), "build_seconds": round(built, 3),
                      "tune_seconds": round(time.perf_counter() - t - built, 3), "best_recall": round(best["recall"], 4),
                      "nprobe": best["nprobe"], "rerank": best["rerank"]})  # fmt: skip
        log.info("faiss:auto on %d %s: %s reaches recall@10 %.4f (nprobe=%s rerank=%s)", n, what, c.factory, best["recall"], best["nprobe"], best["rerank"])
        if best["ok"]:
            faiss.ParameterSpace().set_index_parameters(index, f"nprobe={best['nprobe']}")
            return c, index, best
        if overall is None or best["recall"] > overall[1]["recall"]:
            overall = (c, best)
        del index
    assert overall is not None
    c, best = overall
    raise ConfigError(
        f"min_recall: no index within max_index_memory={format_size(settings.max_index_memory)} reaches recall@10 "
        f"{settings.min_recall} on the {n} {what}; the best was {best['recall']:.4f} ({c.factory}, nprobe={best['nprobe']}, "
        f"rerank={best['rerank']}): raise max_index_memory, lower min_recall or use backend=exact"
    )
