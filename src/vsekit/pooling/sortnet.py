"""Sort-and-weight: the weighted sum of each set's per-dimension descending-sorted values (:func:`pool_sorted`),
on CPU through a Batcher odd-even merge sorting network with an exact hand-written backward, on GPUs (and long
sets) through ``torch.sort``. See :mod:`vsekit.pooling` for the measured speeds."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from vsekit.errors import ConfigError, DataError

from .sets import Lengths, accumulation_dtype, check_lengths, fill_padding, length_mask, masked_amax

AUTO_NETWORK_INFERENCE = (256, 4096)
"""``(max_len, min_slice)``: without autograd, ``method="auto"`` sorts with the sorting network on
CPU when the set length is at most ``max_len`` and B×D at least ``min_slice`` (below that the
per-op overhead of its many small ops outweighs its advantage over ``torch.sort``)."""

AUTO_NETWORK_TRAINING = (64, 16384)
"""``(max_len, min_slice)`` of ``method="auto"`` when a gradient is needed (the network's
backward also stores one byte per comparator and element, so long sets use ``torch.sort``)."""


def l2_chunk(cache_info: Path = Path("/sys/devices/system/cpu/cpu0/cache/index2"), default: int = 32768) -> int:
    """Float32 elements per slice such that four slices fill the core's L2 cache (a power of two from 8,192 to
    65,536): 32,768 for a 512 KB L2, 65,536 for 1 MB and larger. ``default`` where Linux does not describe the
    cache. Larger slices measured slower even where they fit: with a 2 MB L2 (Intel Xeon), 131,072 took GPO's
    training forward + backward on 128×36 and 128×19 sets to 155 ms against 133 ms at 65,536."""
    try:
        if (cache_info / "level").read_text().strip() != "2":
            return default
        text = (cache_info / "size").read_text().strip().upper()
        size = int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    except (OSError, ValueError):
        return default
    return min(65536, max(8192, 1 << ((size // 16).bit_length() - 1)))


NETWORK_CHUNK = l2_chunk()
"""Elements of the B×D plane per thread that the sorting network processes at a time: the batch is cut into
row blocks of ``NETWORK_CHUNK * threads`` elements so that the slices a compare-exchange touches (3 in fp32 per
thread) stay in the core's L2 cache (:func:`l2_chunk`). Whole 128×1024 slices measured 1.4-1.7× slower for
L = 36..64 (512 KB L2); with a 1 MB L2, 65,536 against 32,768 took GPO's training forward + backward on
128×36 and 128×19 sets from 89 to 82 ms (one thread)."""

SORT_METHODS = ("auto", "sort", "network")
"""The ``method`` values of :func:`pool_sorted` and :class:`vsekit.pooling.GPO`."""

_BOTH, _MAX_ONLY, _MIN_ONLY = 0, 1, 2


def sorting_network(n: int, needed: Sequence[int] | None = None) -> list[tuple[int, int, int]]:
    """Batcher odd-even merge sorting network for ``n`` inputs, sorting in descending order.

    Each comparator ``(i, j, kind)`` (``i < j``) puts the larger value at ``i`` and the smaller at
    ``j``. With ``needed`` (the output ranks that will be read), comparators that cannot affect
    those ranks are removed and a comparator whose min (max) output is never read becomes a plain
    max (min): ``kind`` is 0 for compare-exchange, 1 for max-only, 2 for min-only.

    Args:
        n: number of inputs (any n >= 1, not only powers of two).
        needed: output positions that are used; all of them when omitted.

    Returns:
        The comparators in execution order.
    """
    comparators: list[tuple[int, int]] = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        comparators.append((i + j, i + j + k))
            k //= 2
        p *= 2
    live = set(range(n) if needed is None else needed)
    network: list[tuple[int, int, int]] = []
    for i, j in reversed(comparators):
        use_i, use_j = i in live, j in live
        if use_i or use_j:
            network.append((i, j, _BOTH if use_i and use_j else (_MAX_ONLY if use_i else _MIN_ONLY)))
            live.update((i, j))
    return network[::-1]


def _rank_slices(x: Tensor, valid: Tensor, out: Tensor | None = None) -> list[Tensor]:
    """The L positions of ``x`` (B×L×D) as contiguous B×D tensors, copies with padding = -inf.

    ``out`` (L×B'×D with B' >= B) is an optional workspace to copy into, reused across blocks.
    """
    batch, length, dim = x.shape
    if out is None:
        out = torch.empty((length, batch, dim), dtype=x.dtype, device=x.device)
    slices = out[:, :batch]  # each slices[l] is a contiguous B×D block
    slices.copy_(x.transpose(0, 1))
    for pos in range(int(valid.sum(1).min()), length):  # positions padded in some set
        pad = (~valid[:, pos]).nonzero().squeeze(1)
        slices[pos].index_fill_(0, pad, float("-inf"))
    return list(slices.unbind(0))


def _run_network(keys: list[Tensor], network: list[tuple[int, int, int]], swaps: Tensor | None = None) -> None:
    """Sort the B×D tensors ``keys`` in place, elementwise and descending along the list.

    Each compare-exchange is a ``torch.maximum`` and a ``torch.minimum`` over whole slices (the
    list entries are re-pointed rather than copied). If ``swaps`` (C×B×D bool) is given,
    ``swaps[c]`` records where comparator ``c`` exchanged its inputs (all must be full
    compare-exchanges).
    """
    spare = torch.empty_like(keys[0])
    flag = torch.empty_like(keys[0]) if swaps is not None else None
    for c, (i, j, kind) in enumerate(network):
        a, b = keys[i], keys[j]
        if kind == _BOTH:
            if flag is not None:  # into floats, then bool: 7 µs per 32×1024 against 15 for lt into bool
                swaps[c].copy_(torch.lt(a, b, out=flag))
            torch.maximum(a, b, out=spare)
            torch.minimum(a, b, out=b)
            keys[i], spare = spare, a
        elif kind == _MAX_ONLY:
            torch.maximum(a, b, out=a)
        else:
            torch.minimum(a, b, out=b)


def _weighted_ranks(ranks: list[Tensor], weights: Tensor, lens: Tensor, used: Sequence[int]) -> Tensor:
    """``sum_k weights[:, k] * ranks[k]`` over the ``used`` ranks; padded (-inf) ranks are zeroed
    in place first (their weight is 0)."""
    out = torch.zeros_like(ranks[0])
    lens = lens.to(weights.device)
    for k in used:
        pad = (lens <= k).nonzero().squeeze(1)
        if pad.numel():
            ranks[k].index_fill_(0, pad, 0)
        out.addcmul_(ranks[k], weights[:, k, None])
    return out


class _NetworkPool(torch.autograd.Function):
    """Sort-and-weight through a sorting network, with an exact hand-written backward.

    The forward records, per comparator, where it swapped its inputs (one byte per comparator and
    element: C×B×D, e.g. 35 MB for 128×36×1024). The backward sends the gradient of each rank,
    ``g * w_k``, back through the comparators in reverse order, exchanging where the forward
    exchanged: exactly the gradient of the permutation the sort applied. Selection uses
    ``torch.lerp`` with a 0/1 weight, which returns one of its inputs exactly and, unlike
    ``torch.where`` on a bool mask, is vectorised on CPU.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weights: Tensor, lens: Tensor, network: list) -> Tensor:  # type: ignore[override]
        batch, length, dim = x.shape
        swaps = torch.empty((len(network), batch, dim), dtype=torch.bool, device=x.device)
        ranks = _rank_slices(x, length_mask(lens, length, x.device))
        _run_network(ranks, network, swaps)
        out = _weighted_ranks(ranks, weights, lens, range(length))
        ctx.network = network
        ctx.save_for_backward(weights, swaps, *ranks)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        weights, swaps, *ranks = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.stack([torch.linalg.vecdot(rank, grad) for rank in ranks], 1)
        if ctx.needs_input_grad[0]:
            grads = [grad * weights[:, k, None] for k in range(len(ranks))]
            spare, swapped = torch.empty_like(grad), torch.empty_like(grad)
            flags = swaps.view(torch.uint8)  # uint8 -> float converts much faster than bool
            for c in range(len(ctx.network) - 1, -1, -1):
                i, j, _ = ctx.network[c]
                gi, gj = grads[i], grads[j]
                swapped.copy_(flags[c])
                torch.lerp(gi, gj, swapped, out=spare)  # gradient of the input that sat at i
                torch.lerp(gj, gi, swapped, out=gj)
                grads[i], spare = spare, gi
            grad_x = torch.stack(grads, 1)
        return grad_x, grad_w, None, None


def _network_pool(x: Tensor, weights: Tensor, lens: Tensor, used: list[int] | None) -> Tensor:
    """Sort-and-weight with the sorting network, one cache-sized block of sets at a time.

    ``used=None`` means training (all ranks, autograd through :class:`_NetworkPool`); otherwise
    it lists the ranks with a non-zero weight and the network is pruned to them.
    """
    rows = max(1, NETWORK_CHUNK * torch.get_num_threads() // x.shape[2])
    network = sorting_network(x.shape[1], used)
    blocks = zip(x.split(rows), weights.split(rows), lens.split(rows))
    if used is None:
        return torch.cat([_NetworkPool.apply(xb, wb, lb, network) for xb, wb, lb in blocks])
    pooled, workspace = [], x.new_empty((x.shape[1], min(rows, x.shape[0]), x.shape[2]))
    for xb, wb, lb in blocks:
        ranks = _rank_slices(xb, length_mask(lb, xb.shape[1], xb.device), workspace)
        _run_network(ranks, network)
        pooled.append(_weighted_ranks(ranks, wb, lb, used))
    return torch.cat(pooled)


def _sort_pool(x: Tensor, weights: Tensor, valid: Tensor) -> Tensor:
    """Sort-and-weight with ``torch.sort`` on a transposed copy (sorting the contiguous last dim)."""
    ranked = fill_padding(x, valid, float("-inf")).transpose(1, 2).contiguous().sort(dim=-1, descending=True).values
    if not bool(valid.all()):
        ranked = ranked.masked_fill(~valid.unsqueeze(1), 0)  # -inf ranks (weight 0) would give NaN
    return torch.bmm(ranked, weights.unsqueeze(-1)).squeeze(-1)


def sort_pool_on_device(x: Tensor, weights: Tensor, valid: Tensor) -> Tensor:
    """:func:`_sort_pool` without a data-dependent branch or ``nonzero``, so that nothing waits for the device."""
    ranked = x.masked_fill(~valid.unsqueeze(-1), float("-inf")).transpose(1, 2).sort(dim=-1, descending=True).values
    ranked = ranked.masked_fill(~valid.unsqueeze(1), 0)  # -inf ranks (weight 0) would give NaN
    return torch.bmm(ranked, weights.unsqueeze(-1)).squeeze(-1)


def _drop_tail(weights: Tensor, tolerance: float) -> Tensor:
    """Zero, per set, the smallest weights whose total is at most ``tolerance``."""
    ordered, order = weights.sort(dim=1)
    drop = torch.cumsum(ordered, dim=1) <= tolerance
    return weights.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), 0)


def pool_sorted(
    features: Tensor,
    lengths: Lengths,
    weights: Tensor,
    *,
    method: str = "auto",
    tail_tolerance: float = 0.0,
) -> Tensor:
    """Weighted sum of the per-dimension descending-sorted values of each set.

    ``out[b, d] = sum_k weights[b, k] * sort_desc(features[b, :lengths[b], d])[k]``. Padded
    positions never contribute (whatever they hold) and weights past each length are ignored.

    Args:
        features: B×L×D padded sets, valid elements first.
        lengths: B set sizes (tensor on any device, or a sequence of ints).
        weights: B×L' rank weights, ``max(lengths) <= L' <= L``; features past L' are ignored.
        method: ``"sort"`` (``torch.sort``), ``"network"`` (Batcher sorting network) or
            ``"auto"``: the network on CPU within :data:`AUTO_NETWORK_INFERENCE` /
            :data:`AUTO_NETWORK_TRAINING`, ``torch.sort`` otherwise (on GPUs, where one sort
            kernel beats hundreds of elementwise launches). All give the same values up to float
            rounding and the same gradients (ties aside).
        tail_tolerance: opt-in approximation, used only when no gradient is needed: per set, the
            smallest weights whose total is at most this are dropped (not renormalised), so the
            error is at most ``tail_tolerance * max|x|``. Default 0: exact.

    Returns:
        B×D pooled features in the features' dtype.

    Raises:
        ConfigError: for an unknown ``method`` or a negative ``tail_tolerance``.
        DataError: for inconsistent shapes or lengths.
    """
    if method not in SORT_METHODS:
        raise ConfigError(f"unknown sort method {method!r}; expected one of {', '.join(SORT_METHODS)}")
    if tail_tolerance < 0:
        raise ConfigError(f"tail_tolerance must be >= 0, got {tail_tolerance}")
    lens = check_lengths(features, lengths)
    batch = features.shape[0]
    if not isinstance(weights, Tensor) or weights.dim() != 2 or weights.shape[0] != batch or not (
        int(lens.max()) <= weights.shape[1] <= features.shape[1]
    ):
        raise DataError(
            f"weights must be B×L' with B={batch} and max(lengths) <= L' <= {features.shape[1]}, "
            f"got {tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__}"
        )
    return pool_validated(features[:, : weights.shape[1]], lens, weights, method, tail_tolerance)


def pool_validated(x: Tensor, lens: Tensor, weights: Tensor, method: str, tail_tolerance: float) -> Tensor:
    """:func:`pool_sorted` on validated inputs (``x`` already cut to the weights' width).

    Half-precision inputs are sorted and weighted in float32 (the same half values, so the same
    order; the weighted sum accumulates in float32 and cannot overflow), then cast back.
    """
    if x.dtype != accumulation_dtype(x.dtype):
        return pool_validated(x.float(), lens, weights.float(), method, tail_tolerance).to(x.dtype)
    batch, length, dim = x.shape
    valid = length_mask(lens, length, x.device)
    weights = weights.to(device=x.device, dtype=x.dtype).masked_fill(~valid, 0)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weights.requires_grad)
    if method == "auto":
        max_len, min_slice = AUTO_NETWORK_TRAINING if needs_grad else AUTO_NETWORK_INFERENCE
        small = length <= max_len and batch * dim >= min_slice
        method = "network" if x.device.type == "cpu" and small else "sort"
    if needs_grad:
        if method == "network":
            return _network_pool(x, weights, lens, None)
        return _sort_pool(x, weights, valid)
    with torch.no_grad():
        if tail_tolerance > 0:
            weights = _drop_tail(weights, tail_tolerance)
        used = weights.ne(0).any(0).nonzero().flatten().tolist()
        if used == [0]:
            return weights[:, :1] * masked_amax(x, valid)
        if method == "sort":
            return _sort_pool(x, weights, valid)
        return _network_pool(x, weights, lens, used)
