"""Retrieval metrics for image-text similarity matrices (VSE++ / VSE∞ conventions).

A similarity matrix ``sims`` has one row per image and one column per caption; caption ``j``
belongs to image ``j // captions_per_image``. Ranks are 0-based and count the other candidates
scored *at least as high* as the ground truth: ties are broken against the ground truth, so results
are deterministic (the official code breaks ties with an unstable ``np.argsort``) and a degenerate
model that scores everything alike gets the worst ranks, not perfect ones.

* i2t (image query): rank = min over the image's ground-truth captions of their rank, which is
  the number of other images' captions scored at least as high as its best-scored ground truth.
* t2i (caption query): rank = number of other images scored at least as high as the caption's image.
* ``R@K = 100 * mean(rank < K)``, ``medr = floor(median(rank)) + 1``, ``meanr = mean(rank) + 1``
  and ``rsum`` is the sum of the six recalls.

Everything is vectorised with NumPy on the CPU (torch tensors are moved there), in row chunks
that bound the temporary memory to about 1 MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from vsekit.errors import ConfigError, DataError

__all__ = [
    "METRIC_KEYS",
    "PROTOCOLS",
    "Protocol",
    "SimsLike",
    "ensemble_sims",
    "evaluate_protocol",
    "evaluate_sims",
    "format_metrics_table",
    "i2t_ranks",
    "mean_recall",
    "rank_metrics",
    "recall_curve",
    "t2i_ranks",
]

SimsLike = Union[np.ndarray, torch.Tensor]

METRIC_KEYS: tuple[str, ...] = (
    "i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
    "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr",
    "rsum",
)  # fmt: skip

# Elements of ``sims`` compared per chunk: bounds the boolean buffer to ~1 MB, which stays in cache.
_CHUNK_ELEMENTS = 1 << 20


def _as_array(sims: SimsLike, name: str = "sims") -> np.ndarray:
    """Return ``sims`` as a 2-D floating-point NumPy array on the CPU, without copying when possible."""
    if isinstance(sims, torch.Tensor):
        t = sims.detach().cpu()
        if t.is_complex() or t.dtype == torch.bool:
            raise DataError(f"{name}: expected a real-valued matrix, got dtype {t.dtype}")
        if t.dtype == torch.bfloat16:  # unknown to NumPy; float32 holds every bfloat16 exactly
            t = t.float()
        arr = t.numpy()
    else:
        arr = np.asarray(sims)
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{name}: expected a real-valued matrix, got dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D images x captions matrix, got shape {arr.shape}")
    return arr


def _check_sims(sims: SimsLike, captions_per_image: int, folds: int = 1) -> np.ndarray:
    """Validate a similarity matrix against the layout and return it as an array."""
    if isinstance(captions_per_image, bool) or not isinstance(captions_per_image, int) or captions_per_image < 1:
        raise DataError(f"captions_per_image: expected a positive integer, got {captions_per_image!r}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise DataError(f"folds: expected a positive integer, got {folds!r}")
    arr = _as_array(sims)
    n, m = arr.shape
    if n == 0:
        raise DataError("sims: expected at least one image row, got 0")
    if m != n * captions_per_image:
        raise DataError(
            f"sims: expected {n} x {n * captions_per_image} (images x images*{captions_per_image} captions), "
            f"got shape {n} x {m}"
        )
    if n % folds:
        raise DataError(f"sims: {n} images cannot be split into {folds} equal folds")
    # A sum is far cheaper than isnan().any(); it is NaN for any NaN (or for +inf and -inf together).
    with np.errstate(invalid="ignore", over="ignore"):
        total = arr.sum()
    if np.isnan(total) and np.isnan(arr).any():
        raise DataError("sims: contains NaN scores")
    return arr


def _count_ranks(sims: np.ndarray, k: int, i2t: bool = True, t2i: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Compute i2t and/or t2i ranks of a validated matrix (empty arrays for the skipped side).

    Single-threaded NumPy in row chunks: as fast as multithreaded torch on an idle CPU for this
    memory-bound work, and unlike it not slowed down ten-fold when other processes share the cores.
    """
    n, m = sims.shape
    cols = np.arange(m)
    gt = sims[cols // k, cols]  # score of each caption with its own image
    best_gt = gt.reshape(n, k).max(axis=1)
    rows = max(1, min(n, _CHUNK_ELEMENTS // m))
    r_i2t = np.empty(n if i2t else 0, dtype=np.int64)
    r_t2i = np.zeros(m if t2i else 0, dtype=np.int64)
    above = np.empty((rows, m), dtype=bool)  # reused: no allocation per chunk
    for a in range(0, n, rows):
        chunk = sims[a : a + rows]
        buf = above[: chunk.shape[0]]
        if i2t:
            np.greater_equal(chunk, best_gt[a : a + rows, None], out=buf)
            r_i2t[a : a + rows] = np.count_nonzero(buf, axis=1)
        if t2i:
            np.greater_equal(chunk, gt, out=buf)
            r_t2i += np.count_nonzero(buf, axis=0)
    if i2t:  # the image's own captions at its best score are not counted
        r_i2t -= (gt.reshape(n, k) == best_gt[:, None]).sum(axis=1)
    if t2i:  # nor is the caption's own image
        r_t2i -= 1
    return r_i2t, r_t2i


def i2t_ranks(sims: SimsLike, captions_per_image: int = 5) -> np.ndarray:
    """0-based rank of each image query: other images' captions scored at least as high as its best ground truth.

    Args:
        sims: images x (images * captions_per_image) similarity matrix.
        captions_per_image: ground-truth captions per image (caption ``j`` is of image ``j // k``).

    Returns:
        An int64 array with one rank per image.

    Raises:
        DataError: if ``sims`` is not such a matrix or contains NaN.
    """
    return _count_ranks(_check_sims(sims, captions_per_image), captions_per_image, t2i=False)[0]


def t2i_ranks(sims: SimsLike, captions_per_image: int = 5) -> np.ndarray:
    """0-based rank of each caption query: other images scored at least as high as the caption's image.

    Args:
        sims: images x (images * captions_per_image) similarity matrix.
        captions_per_image: ground-truth captions per image (caption ``j`` is of image ``j // k``).

    Returns:
        An int64 array with one rank per caption, in column order.

    Raises:
        DataError: if ``sims`` is not such a matrix or contains NaN.
    """
    return _count_ranks(_check_sims(sims, captions_per_image), captions_per_image, i2t=False)[1]


def rank_metrics(ranks: np.ndarray | Sequence[int] | torch.Tensor) -> dict[str, float]:
    """Recall and rank statistics of 0-based ranks.

    Args:
        ranks: one non-negative rank per query.

    Returns:
        ``{"r1", "r5", "r10"}`` in percent, ``"medr"`` = floor(median) + 1 and
        ``"meanr"`` = mean + 1, all plain floats.

    Raises:
        DataError: if ``ranks`` is empty, not 1-D or holds negative values.
    """
    r = ranks.detach().cpu().numpy() if isinstance(ranks, torch.Tensor) else np.asarray(ranks)
    if r.ndim != 1 or r.size == 0:
        raise DataError(f"ranks: expected a non-empty 1-D array, got shape {r.shape}")
    if r.dtype.kind not in "iuf" or np.isnan(r).any() or (r < 0).any():
        raise DataError("ranks: expected non-negative numbers")
    out = {f"r{K}": float(100.0 * np.mean(r < K)) for K in (1, 5, 10)}
    out["medr"] = float(np.floor(np.median(r)) + 1)
    out["meanr"] = float(np.mean(r) + 1)
    return out


def recall_curve(sims: SimsLike, captions_per_image: int = 5, max_k: int = 50) -> dict[str, np.ndarray]:
    """R@K for every K = 1..max_k in both directions (for R@K curves).

    Args:
        sims: images x (images * captions_per_image) similarity matrix.
        captions_per_image: ground-truth captions per image.
        max_k: the largest K.

    Returns:
        ``{"k": 1..max_k, "i2t": R@K in percent, "t2i": R@K in percent}`` as float arrays.
    """
    if not isinstance(max_k, int) or max_k < 1:
        raise DataError(f"max_k: expected a positive integer, got {max_k!r}")
    checked = _check_sims(sims, captions_per_image)
    r_i2t, r_t2i = _count_ranks(checked, captions_per_image)
    ks = np.arange(1, max_k + 1)
    # R@K = share of queries with rank < K: a cumulative histogram of the ranks
    def curve(ranks: np.ndarray) -> np.ndarray:
        hist = np.bincount(np.minimum(ranks, max_k), minlength=max_k + 1)[:max_k]
        return 100.0 * np.cumsum(hist) / ranks.size

    return {"k": ks.astype(np.float64), "i2t": curve(r_i2t), "t2i": curve(r_t2i)}


def mean_recall(metrics: dict[str, float]) -> float:
    """mR: the mean of the six recalls R@1/5/10 in both directions (the remote-sensing papers' summary)."""
    return sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)) / 6.0


def evaluate_sims(sims: SimsLike, captions_per_image: int = 5, folds: int = 1) -> dict[str, float]:
    """Bidirectional retrieval metrics of a similarity matrix.

    With ``folds > 1`` (the COCO 1K protocol), the images are split into ``folds`` sequential
    folds of ``n`` images; each fold is evaluated on its diagonal block
    ``sims[f*n:(f+1)*n, f*n*k:(f+1)*n*k]`` and every metric is averaged over folds.

    Args:
        sims: images x (images * captions_per_image) similarity matrix, NumPy or torch
            (any floating dtype and device).
        captions_per_image: ground-truth captions per image.
        folds: number of sequential folds to average over.

    Returns:
        The metrics of :data:`METRIC_KEYS` as plain floats.

    Raises:
        DataError: if the shape does not match the layout, the images do not split evenly into
            folds, or ``sims`` contains NaN.
    """
    arr = _check_sims(sims, captions_per_image, folds)
    k = captions_per_image
    n = arr.shape[0] // folds
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    for f in range(folds):
        block = arr[f * n : (f + 1) * n, f * n * k : (f + 1) * n * k]
        r_i2t, r_t2i = _count_ranks(block, k)
        fold = {f"i2t_{key}": v for key, v in rank_metrics(r_i2t).items()}
        fold |= {f"t2i_{key}": v for key, v in rank_metrics(r_t2i).items()}
        fold["rsum"] = sum(fold[f"{d}_r{K}"] for d in ("i2t", "t2i") for K in (1, 5, 10))
        for key in METRIC_KEYS:
            totals[key] += fold[key]
    return {key: v / folds for key, v in totals.items()}


def ensemble_sims(sims_list: Sequence[SimsLike], weights: Sequence[float] | None = None) -> SimsLike:
    """Weighted average of similarity matrices (the VSE∞ ensemble; equal weights by default).

    Args:
        sims_list: matrices of the same shape, NumPy or torch.
        weights: one non-negative weight per matrix, normalised to sum to 1.

    Returns:
        The averaged matrix: a torch tensor if any input is a tensor, else a NumPy array.

    Raises:
        DataError: if the list is empty or the shapes differ.
        ConfigError: if the weights do not match the matrices or are not usable.
    """
    if len(sims_list) == 0:
        raise DataError("sims_list: expected at least one similarity matrix, got none")
    if weights is None:
        weights = [1.0] * len(sims_list)
    w = [float(x) for x in weights]
    if len(w) != len(sims_list):
        raise ConfigError(f"weights: expected {len(sims_list)} weights (one per matrix), got {len(w)}")
    if any(not np.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ConfigError(f"weights: expected finite non-negative weights with a positive sum, got {w}")
    w = [x / sum(w) for x in w]
    shape = tuple(sims_list[0].shape)
    for i, s in enumerate(sims_list):
        if tuple(s.shape) != shape:
            raise DataError(f"sims_list[{i}]: expected shape {shape} like sims_list[0], got {tuple(s.shape)}")
    ts = [
        s.detach()
        if isinstance(s, torch.Tensor)
        else torch.from_numpy(np.ascontiguousarray(_as_array(s, f"sims_list[{i}]")))
        for i, s in enumerate(sims_list)
    ]
    dtype = torch.float32
    for t in ts:
        dtype = torch.promote_types(dtype, t.dtype)
    out = ts[0].to(dtype=dtype) * w[0]  # a new tensor: the inputs are never modified
    for t, wi in zip(ts[1:], w[1:]):
        out.add_(t.to(device=out.device, dtype=dtype), alpha=wi)
    return out if any(isinstance(s, torch.Tensor) for s in sims_list) else out.numpy()


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: how a test similarity matrix is laid out and scored.

    Attributes:
        name: short identifier, the key in :data:`PROTOCOLS`.
        folds: number of sequential folds whose metrics are averaged.
        captions_per_image: captions per image, or ``None`` to infer it from the shape.
        description: one-line human description.
        num_images: required number of images (rows), or ``None`` for any.
    """

    name: str
    folds: int
    captions_per_image: int | None
    description: str
    num_images: int | None = None


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("coco1k", 5, 5, "COCO 5-fold 1K test: 5 folds of 1000 images x 5000 captions, averaged", 5000),
        Protocol("coco5k", 1, 5, "COCO 5K test: 5000 images x 25000 captions", 5000),
        Protocol("f30k", 1, 5, "Flickr30K 1K test: 1000 images x 5000 captions", 1000),
        Protocol("kcaptions", 1, None, "generic: any N images x k*N captions, k inferred from the shape"),
    )
}


def evaluate_protocol(sims: SimsLike, protocol: str | Protocol) -> dict[str, float]:
    """Evaluate ``sims`` under a named or given :class:`Protocol`.

    Args:
        sims: images x captions similarity matrix.
        protocol: a key of :data:`PROTOCOLS` or a :class:`Protocol`.

    Returns:
        The metrics of :func:`evaluate_sims`.

    Raises:
        ConfigError: if the protocol name is unknown.
        DataError: if the matrix does not have the protocol's number of images or layout.
    """
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol: unknown {protocol!r}, expected one of {', '.join(PROTOCOLS)}")
        protocol = PROTOCOLS[protocol]
    sims = _as_array(sims)
    n, m = sims.shape
    if protocol.num_images is not None and n != protocol.num_images:
        raise DataError(f"sims: protocol {protocol.name} expects {protocol.num_images} images, got {n}")
    k = protocol.captions_per_image
    if k is None:
        if n == 0 or m % n:
            raise DataError(f"sims: protocol {protocol.name} expects k*N captions for N images, got shape {n} x {m}")
        k = m // n
    return evaluate_sims(sims, captions_per_image=k, folds=protocol.folds)


_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("i2t R@1", "i2t_r1"), ("R@5", "i2t_r5"), ("R@10", "i2t_r10"), ("medr", "i2t_medr"),
    ("t2i R@1", "t2i_r1"), ("R@5", "t2i_r5"), ("R@10", "t2i_r10"), ("medr", "t2i_medr"),
    ("rsum", "rsum"),
)  # fmt: skip


def format_metrics_table(results: dict[str, dict[str, float]], title: str | None = None) -> str:
    """Format named metric dicts as an aligned Markdown table, one row per result.

    Args:
        results: name -> metrics dict as returned by :func:`evaluate_sims`.
        title: optional line printed above the table.

    Returns:
        The table text, ending without a newline.

    Raises:
        DataError: if a result lacks one of the table's metrics.
    """
    header = ["model"] + [label for label, _ in _TABLE_COLUMNS]
    rows = []
    for name, metrics in results.items():
        missing = [key for _, key in _TABLE_COLUMNS if key not in metrics]
        if missing:
            raise DataError(f"results[{name!r}]: missing metric(s) {', '.join(missing)}")
        rows.append([str(name)] + [f"{float(metrics[key]):.1f}" for _, key in _TABLE_COLUMNS])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join([":" + "-" * (widths[0] + 1)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    lines = ([title, ""] if title else []) + [line(header), rule] + [line(r) for r in rows]
    return "\n".join(lines)
