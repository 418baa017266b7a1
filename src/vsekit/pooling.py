"""Set pooling: GPO (VSE∞'s Generalized Pooling Operator) and the fixed poolings it generalises.

Every pooling maps a padded batch of sets ``features`` (B×L×D, the valid elements of set ``b`` at
the front, ``lengths[b]`` of them) to one vector per set and returns ``(pooled B×D, weights B×L)``.
``weights[b, k]`` is the weight of the ``k``-th largest value (rank ``k``) of every feature dimension,
so each pooling is ``pooled[b, d] = sum_k weights[b, k] * sorted_desc(features[b, :len_b, d])[k]``:
mean pooling puts ``1/len`` on every valid rank, max pooling ``1`` on rank 0, K-max pooling ``1/K``
on the first ``K`` ranks and GPO a learned softmax over ranks that depends only on the set size.
Padded positions always get weight exactly 0 and never influence the result, whatever they hold.

Functional ops: :func:`positional_encoding`, :func:`gpo_size_weights`, :func:`gpo_weights`,
:func:`pool_sorted`, :func:`sorting_network`. Modules: :class:`GPO`, :class:`MeanPool`,
:class:`MaxPool`, :class:`KMaxPool`, built by name with :func:`create_pooling`.

Speed (CPU, float32, 128×36×1024, exact results; ``benchmarks/bench_gpo.py``): a masked
``amax`` (max pooling) takes ~3 ms, while ``torch.sort`` along the set axis (the official code)
takes ~75× that and on a transposed copy ~35×. :func:`pool_sorted` therefore sorts on CPU with a
Batcher odd-even merge sorting network (268 compare-exchanges for 36 inputs), each a
``torch.maximum``/``torch.minimum`` over a whole contiguous B×D slice, run in place on blocks of
sets small enough to stay in cache (~7-10× max pooling). Training goes through a custom autograd
function that records each swap and routes the gradient back through the same swaps. The result
is exact: a sorting network produces the same sorted values as ``torch.sort`` and its gradient is
the gradient of the sort (ties aside, where both are valid subgradients). At inference, ranks
whose weight is exactly zero in every set are pruned from the network, and weights on rank 0 only
reduce to a masked ``amax``. GPUs use ``torch.sort`` (one kernel instead of hundreds).
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vsekit.errors import ConfigError, DataError

__all__ = [
    "GPO_TEMPERATURE",
    "AUTO_NETWORK_INFERENCE",
    "AUTO_NETWORK_TRAINING",
    "NETWORK_CHUNK",
    "GPO",
    "MeanPool",
    "MaxPool",
    "KMaxPool",
    "SetPooling",
    "check_lengths",
    "length_mask",
    "positional_encoding",
    "gpo_size_weights",
    "gpo_weights",
    "pool_sorted",
    "sorting_network",
    "register_pooling",
    "create_pooling",
    "list_poolings",
]

GPO_TEMPERATURE = 0.1
"""Softmax temperature of the GPO weight generator (fixed in VSE∞)."""

AUTO_NETWORK_INFERENCE = (256, 4096)
"""``(max_len, min_slice)``: without autograd, ``method="auto"`` sorts with the sorting network on
CPU when the set length is at most ``max_len`` and B×D at least ``min_slice`` (below that the
per-op overhead of its many small ops outweighs its advantage over ``torch.sort``)."""

AUTO_NETWORK_TRAINING = (64, 16384)
"""``(max_len, min_slice)`` of ``method="auto"`` when a gradient is needed (the network's
backward also stores one byte per comparator and element, so long sets use ``torch.sort``)."""

NETWORK_CHUNK = 32768
"""Elements of the B×D plane per thread that the sorting network processes at a time: the batch
is cut into row blocks of ``NETWORK_CHUNK * threads`` elements so that the slices a
compare-exchange touches (~3 × 128 KB in fp32 per thread) stay in the core's L2 cache, which
measured 1.4-1.7× faster than whole 128×1024 slices for L = 36..64."""

Lengths = Tensor | Sequence[int]

_METHODS = ("auto", "sort", "network")
_BOTH, _MAX_ONLY, _MIN_ONLY = 0, 1, 2


# --------------------------------------------------------------------------------------------
# Validation and masks
# --------------------------------------------------------------------------------------------


def check_lengths(features: Tensor, lengths: Lengths) -> Tensor:
    """Validate a padded batch and its set sizes.

    Args:
        features: B×L×D floating-point tensor, the valid elements of each set at the front.
        lengths: the B set sizes, as an integer tensor on any device (integral floats, as in the
            official code, are accepted) or a sequence of ints.

    Returns:
        The sizes as an int64 CPU tensor of shape (B,).

    Raises:
        DataError: if ``features`` is not a floating B×L×D tensor, or ``lengths`` is not 1-D with
            one size per set, not integral, or outside ``1..L``.
    """
    if not isinstance(features, Tensor) or features.dim() != 3 or not features.is_floating_point():
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise DataError(f"features must be a floating-point B×L×D tensor, got {shape}")
    batch, max_len, _ = features.shape
    if batch == 0 or max_len == 0:
        raise DataError(f"features must hold at least one set and one position, got {tuple(features.shape)}")
    if isinstance(lengths, Tensor):
        lens = lengths.detach().to("cpu")
    else:
        try:
            lens = torch.as_tensor(list(lengths))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"lengths must be a 1-D sequence of ints, got {lengths!r}") from exc
    if lens.dim() != 1 or lens.numel() != batch:
        raise DataError(f"lengths must have shape ({batch},) to match features, got {tuple(lens.shape)}")
    if lens.dtype == torch.bool or lens.is_complex():
        raise DataError(f"lengths must be integers, got dtype {lens.dtype}")
    if lens.is_floating_point():
        if not bool(torch.equal(lens, lens.round())):
            raise DataError("lengths must be whole numbers")
    lens = lens.to(torch.int64)
    if int(lens.min()) < 1 or int(lens.max()) > max_len:
        raise DataError(
            f"lengths must lie in 1..{max_len} (the padded set size), got min {int(lens.min())}, "
            f"max {int(lens.max())}"
        )
    return lens


def length_mask(lengths: Tensor, max_len: int, device: torch.device | None = None) -> Tensor:
    """Boolean B×``max_len`` mask that is True at the first ``lengths[b]`` positions of row ``b``."""
    lengths = lengths.to(device, non_blocking=True) if device is not None else lengths  # host lengths: no wait
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(1)


def _on_accelerator(features: Tensor, lengths: Lengths) -> bool:
    """Whether ``lengths`` already lie on the (non-CPU) device of ``features``: pool without reading them back."""
    return isinstance(lengths, Tensor) and lengths.device.type != "cpu" and features.device == lengths.device


def _check_on_device(features: Tensor, lengths: Tensor) -> Tensor:
    """:func:`check_lengths` for sizes on an accelerator: shapes checked now, the range by an asynchronous
    device assert (a host read would make the host wait for the device). Returns int64 sizes there."""
    if features.dim() != 3 or not features.is_floating_point() or lengths.shape != features.shape[:1]:
        raise DataError(
            f"features must be a floating-point B×L×D tensor and lengths (B,), got {tuple(features.shape)} "
            f"and {tuple(lengths.shape)}"
        )
    lens = lengths.to(torch.int64)
    torch._assert_async(((lens >= 1) & (lens <= features.shape[1])).all(), "lengths must lie in 1..L (the padded size)")
    return lens


def _prepare(features: Tensor, lengths: Lengths) -> tuple[Tensor, Tensor]:
    """Validated lengths and the B×L validity mask on the features' device. The lengths come back as an int64
    CPU tensor, or, when they already lie on the features' accelerator, there (never read by the host)."""
    lens = _check_on_device(features, lengths) if _on_accelerator(features, lengths) else check_lengths(features, lengths)
    return lens, length_mask(lens, features.shape[1], features.device)


# --------------------------------------------------------------------------------------------
# GPO weight generator
# --------------------------------------------------------------------------------------------


def positional_encoding(
    length: int, dim: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Sinusoidal position encodings of positions ``0..length-1`` (as in VSE∞ and Transformers).

    ``pe[k, 2j] = sin(k * w_j)`` and ``pe[k, 2j+1] = cos(k * w_j)`` with ``w_j = 10000^(-2j/dim)``.
    Computed in float32 (like the official code) and then cast to ``dtype``; the encoding of a
    shorter length is a prefix of a longer one.

    Args:
        length: number of positions.
        dim: encoding size; must be even.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        ``length``×``dim`` tensor.
    """
    if dim <= 0 or dim % 2:
        raise ConfigError(f"positional encoding size must be a positive even number, got {dim}")
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.empty(length, dim, dtype=torch.float32, device=device)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe.to(dtype)


def gpo_size_weights(
    sizes: Sequence[int] | Tensor,
    gru: nn.GRU,
    linear: nn.Linear,
    pe: Tensor | None = None,
    temperature: float = GPO_TEMPERATURE,
) -> Tensor:
    """GPO weights for a list of set sizes: one BiGRU pass over the packed encodings of all sizes.

    Row ``u`` is the weight vector of a set of size ``sizes[u]``: the BiGRU runs over
    ``PE(0..sizes[u]-1)``, its two directions are averaged, ``linear`` scores each position and a
    softmax at ``temperature`` over the valid positions gives the weights (padded entries are
    exactly 0). This is what VSE∞ computes per sample; the result depends only on the size.

    Args:
        sizes: U set sizes (each >= 1; duplicates allowed but wasteful).
        gru: bidirectional, batch-first, single-layer GRU taking the encodings as input.
        linear: scorer from the GRU hidden size to 1.
        pe: encodings of at least ``max(sizes)`` positions on the GRU's device and dtype; built
            with :func:`positional_encoding` when omitted.
        temperature: softmax temperature.

    Returns:
        U×max(sizes) weights in the GRU's dtype, differentiable w.r.t. the GRU and linear weights.
    """
    if not (gru.bidirectional and gru.batch_first and gru.num_layers == 1):
        raise ConfigError("GPO needs a single-layer, batch-first, bidirectional GRU")
    sizes_cpu = torch.as_tensor(sizes, dtype=torch.int64).detach().cpu()
    if sizes_cpu.dim() != 1 or sizes_cpu.numel() == 0 or int(sizes_cpu.min()) < 1:
        raise DataError(f"set sizes must be a non-empty 1-D list of positive ints, got {sizes_cpu.tolist()}")
    weight = gru.weight_ih_l0
    longest = int(sizes_cpu.max())
    if pe is None:
        pe = positional_encoding(longest, gru.input_size, device=weight.device, dtype=weight.dtype)
    inputs = pe[:longest].unsqueeze(0).expand(sizes_cpu.numel(), longest, pe.shape[1])
    descending = bool((sizes_cpu[:-1] >= sizes_cpu[1:]).all())  # then no permutation is sent to the device
    packed = pack_padded_sequence(inputs, sizes_cpu, batch_first=True, enforce_sorted=descending)
    hidden, _ = pad_packed_sequence(gru(packed)[0], batch_first=True, total_length=longest)
    hidden = (hidden[..., : gru.hidden_size] + hidden[..., gru.hidden_size :]) / 2
    scores = linear(hidden).squeeze(-1)
    scores = scores.masked_fill(~length_mask(sizes_cpu, longest, scores.device), float("-inf"))
    wide = torch.promote_types(scores.dtype, torch.float32)  # softmax of half scores in fp32
    return torch.softmax(scores.to(wide) / temperature, dim=1).to(scores.dtype)


def gpo_weights(
    lengths: Lengths,
    gru: nn.GRU,
    linear: nn.Linear,
    pe: Tensor | None = None,
    temperature: float = GPO_TEMPERATURE,
) -> Tensor:
    """GPO weights for a batch of set sizes, computed once per distinct size.

    Equivalent (values and gradients) to running the generator separately for every set, but the
    BiGRU only sees the distinct sizes; rows are then gathered with the inverse index, so the
    gradient of a size's row accumulates over all the sets that share it.

    Args:
        lengths: B set sizes (tensor on any device, or a sequence of ints).
        gru: see :func:`gpo_size_weights`.
        linear: see :func:`gpo_size_weights`.
        pe: see :func:`gpo_size_weights`.
        temperature: softmax temperature.

    Returns:
        B×max(lengths) weights on the GRU's device; entries past each length are exactly 0.
    """
    lens = torch.as_tensor(lengths).detach().to("cpu", torch.int64)
    sizes, inverse = torch.unique(lens, return_inverse=True)
    rows = gpo_size_weights(sizes, gru, linear, pe, temperature)
    return rows[inverse.to(rows.device)]


# --------------------------------------------------------------------------------------------
# Sorting network and sort-and-weight
# --------------------------------------------------------------------------------------------


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


def _fill_padding(x: Tensor, valid: Tensor, value: float) -> Tensor:
    """Copy of ``x`` (B×L×D) with the padded rows set to ``value``, whatever they held.

    ``index_fill`` on the B·L rows is used because it is exact for any padding (inf, NaN) and,
    on CPU, several times faster than ``masked_fill``/``torch.where`` with a broadcast mask.
    """
    pad = (~valid).flatten().nonzero().squeeze(1)
    if pad.numel() == 0:
        return x
    batch, length, dim = x.shape
    return x.reshape(batch * length, dim).index_fill(0, pad, value).view(batch, length, dim)


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
    for c, (i, j, kind) in enumerate(network):
        a, b = keys[i], keys[j]
        if kind == _BOTH:
            if swaps is not None:
                torch.lt(a, b, out=swaps[c])
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
    ranked = _fill_padding(x, valid, float("-inf")).transpose(1, 2).contiguous().sort(dim=-1, descending=True).values
    if not bool(valid.all()):
        ranked = ranked.masked_fill(~valid.unsqueeze(1), 0)  # -inf ranks (weight 0) would give NaN
    return torch.bmm(ranked, weights.unsqueeze(-1)).squeeze(-1)


def _sort_pool_device(x: Tensor, weights: Tensor, valid: Tensor) -> Tensor:
    """:func:`_sort_pool` without a data-dependent branch or ``nonzero``, so that nothing waits for the device."""
    ranked = x.masked_fill(~valid.unsqueeze(-1), float("-inf")).transpose(1, 2).sort(dim=-1, descending=True).values
    ranked = ranked.masked_fill(~valid.unsqueeze(1), 0)  # -inf ranks (weight 0) would give NaN
    return torch.bmm(ranked, weights.unsqueeze(-1)).squeeze(-1)


def _masked_amax(x: Tensor, valid: Tensor) -> Tensor:
    """Per-dimension maximum over the valid positions of each set (B×L×D -> B×D)."""
    return _fill_padding(x, valid, float("-inf")).amax(1)


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
    if method not in _METHODS:
        raise ConfigError(f"unknown sort method {method!r}; expected one of {', '.join(_METHODS)}")
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
    return _pool_sorted(features[:, : weights.shape[1]], lens, weights, method, tail_tolerance)


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of a pooling: float32 for half-precision inputs, else ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def _pool_sorted(x: Tensor, lens: Tensor, weights: Tensor, method: str, tail_tolerance: float) -> Tensor:
    """:func:`pool_sorted` on validated inputs (``x`` already cut to the weights' width).

    Half-precision inputs are sorted and weighted in float32 (the same half values, so the same
    order; the weighted sum accumulates in float32 and cannot overflow), then cast back.
    """
    if x.dtype != _wide(x.dtype):
        return _pool_sorted(x.float(), lens, weights.float(), method, tail_tolerance).to(x.dtype)
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
            return weights[:, :1] * _masked_amax(x, valid)
        if method == "sort":
            return _sort_pool(x, weights, valid)
        return _network_pool(x, weights, lens, used)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class SetPooling(nn.Module):
    """Base class of the poolings: ``forward(features, lengths) -> (pooled B×D, weights B×L)``."""

    def forward(self, features: Tensor, lengths: Lengths) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError


_Factory = TypeVar("_Factory", bound=Callable[..., nn.Module])
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], str | None]] = {}


def register_pooling(
    name: str, *aliases: str, suffix_arg: str | None = None
) -> Callable[[_Factory], _Factory]:
    """Class decorator registering a pooling factory under ``name`` (and ``aliases``).

    Args:
        name: registry name (lower case).
        aliases: extra names for the same factory.
        suffix_arg: keyword argument filled by an integer suffix, so that ``"kmax:5"`` and
            ``"kmax-5"`` mean ``create_pooling("kmax", k=5)``.
    """

    def decorate(factory: _Factory) -> _Factory:
        for key in (name, *aliases):
            if key in _REGISTRY:
                raise ConfigError(f"pooling {key!r} is already registered")
            _REGISTRY[key] = (factory, suffix_arg)
        return factory

    return decorate


def list_poolings() -> list[str]:
    """Names accepted by :func:`create_pooling` (aliases included), sorted."""
    return sorted(_REGISTRY)


def create_pooling(name: str, **kwargs: object) -> nn.Module:
    """Build a pooling by name: ``"gpo"``, ``"mean"`` (alias ``"avg"``), ``"max"``, ``"kmax"``.

    ``"kmax:5"`` / ``"kmax-5"`` is short for ``create_pooling("kmax", k=5)``.

    Raises:
        ConfigError: for an unknown name or invalid arguments.
    """
    key = str(name).strip().lower()
    suffix = None
    match = re.fullmatch(r"([a-z_]+)[:\-](\d+)", key)
    if match and match.group(1) in _REGISTRY:
        key, suffix = match.group(1), int(match.group(2))
    if key not in _REGISTRY:
        raise ConfigError(f"unknown pooling {name!r}; known: {', '.join(list_poolings())}")
    factory, suffix_arg = _REGISTRY[key]
    if suffix is not None:
        if suffix_arg is None:
            raise ConfigError(f"pooling {key!r} takes no numeric suffix, got {name!r}")
        if suffix_arg in kwargs:
            raise ConfigError(f"pooling {name!r} sets {suffix_arg} twice")
        kwargs[suffix_arg] = suffix
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid arguments for pooling {key!r}: {exc}") from exc


@register_pooling("mean", "avg")
class MeanPool(SetPooling):
    """Average over the valid elements (weight ``1/len`` on every valid rank); no sort."""

    def forward(self, features: Tensor, lengths: Lengths) -> tuple[Tensor, Tensor]:
        """Pool ``features`` (B×L×D) over their first ``lengths`` elements."""
        lens, valid = _prepare(features, lengths)
        wide = _wide(features.dtype)  # half precision: sum in float32 (36 values near 6e4 overflow fp16)
        counts = lens.to(features.device, wide).unsqueeze(1)
        if lens.device.type == "cpu" and int(lens.min()) == features.shape[1]:  # all full: no masking
            pooled = features.sum(1, dtype=wide) / counts
        else:
            pooled = _fill_padding(features, valid, 0).sum(1, dtype=wide) / counts
        return pooled.to(features.dtype), (valid.to(wide) / counts).to(features.dtype)


@register_pooling("max")
class MaxPool(SetPooling):
    """Per-dimension maximum over the valid elements (weight 1 on rank 0); a masked ``amax``."""

    def forward(self, features: Tensor, lengths: Lengths) -> tuple[Tensor, Tensor]:
        """Pool ``features`` (B×L×D) over their first ``lengths`` elements."""
        lens, valid = _prepare(features, lengths)
        pooled = _masked_amax(features, valid)
        weights = torch.zeros(valid.shape, dtype=features.dtype, device=features.device)
        weights[:, 0] = 1
        return pooled, weights


@register_pooling("kmax", suffix_arg="k")
class KMaxPool(SetPooling):
    """Mean of the ``min(k, len)`` largest values of each dimension (``torch.topk``, no full sort).

    Args:
        k: number of top values averaged (``k=1`` is max pooling, ``k >= len`` mean pooling).
    """

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"kmax pooling needs an integer k >= 1, got {k!r}")
        self.k = k

    def extra_repr(self) -> str:
        return f"k={self.k}"

    def forward(self, features: Tensor, lengths: Lengths) -> tuple[Tensor, Tensor]:
        """Pool ``features`` (B×L×D) over their first ``lengths`` elements."""
        lens, valid = _prepare(features, lengths)
        top = min(self.k, features.shape[1])
        counts = lens.clamp(max=self.k).to(features.device)
        values = _fill_padding(features, valid, float("-inf")).topk(top, dim=1).values
        wide = _wide(features.dtype)  # half precision: sum in float32
        summed = _fill_padding(values, length_mask(counts, top), 0).sum(1, dtype=wide)
        pooled = (summed / counts.to(wide).unsqueeze(1)).to(features.dtype)
        weights = length_mask(counts, features.shape[1]).to(features.dtype) / counts.to(features.dtype).unsqueeze(1)
        return pooled, weights


@register_pooling("gpo")
class GPO(SetPooling):
    """Generalized Pooling Operator of VSE∞ (Chen et al., CVPR 2021), exact behaviour.

    Weights over ranks come from a BiGRU run over sinusoidal encodings of positions ``0..L-1``
    (directions averaged), a bias-free linear scorer and a softmax at temperature 0.1 over the
    valid positions. They depend only on the set size ``L``, so they are computed once per
    distinct size in a batch and, when no gradient can reach the generator (``no_grad`` /
    ``inference_mode``, or frozen parameters), cached per size on the instance. The cache is keyed
    on the parameters' version counters, storage, device and dtype, so optimizer steps,
    ``load_state_dict`` and ``.to()`` invalidate it; call :meth:`clear_cache` after writing to
    ``param.data`` directly (such writes bypass version counters).

    Submodule names (``gru``, ``linear``) match the official checkpoint keys ``gpool.gru.*`` and
    ``gpool.linear.weight``.

    Args:
        d_pe: positional-encoding size (even).
        d_hidden: BiGRU hidden size.
        method: sort method of :func:`pool_sorted`.
        tail_tolerance: opt-in inference approximation of :func:`pool_sorted` (default exact).
    """

    def __init__(
        self, d_pe: int = 32, d_hidden: int = 32, *, method: str = "auto", tail_tolerance: float = 0.0
    ) -> None:
        super().__init__()
        if d_pe <= 0 or d_pe % 2:
            raise ConfigError(f"GPO d_pe must be a positive even number, got {d_pe}")
        if d_hidden <= 0:
            raise ConfigError(f"GPO d_hidden must be positive, got {d_hidden}")
        if method not in _METHODS:
            raise ConfigError(f"unknown sort method {method!r}; expected one of {', '.join(_METHODS)}")
        if tail_tolerance < 0:
            raise ConfigError(f"tail_tolerance must be >= 0, got {tail_tolerance}")
        self.d_pe, self.d_hidden = d_pe, d_hidden
        self.method, self.tail_tolerance = method, tail_tolerance
        self.gru = nn.GRU(d_pe, d_hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)
        self._pe_cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._weight_cache: dict[tuple[torch.device, torch.dtype], tuple[tuple, dict[int, Tensor]]] = {}
        self._table_cache: dict[tuple[torch.device, torch.dtype], tuple[tuple, Tensor]] = {}

    def extra_repr(self) -> str:
        return f"d_pe={self.d_pe}, d_hidden={self.d_hidden}, method={self.method!r}"

    def clear_cache(self) -> None:
        """Drop the cached positional encodings and weight vectors."""
        self._pe_cache.clear()
        self._weight_cache.clear()
        self._table_cache.clear()

    def train(self, mode: bool = True) -> GPO:
        """Switch mode and drop the caches."""
        self.clear_cache()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        """Drop the caches, then load as usual (the version counters would catch it too)."""
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def positional_encoding(self, length: int) -> Tensor:
        """``length``×``d_pe`` encodings on the parameters' device and dtype (cached prefix)."""
        weight = self.gru.weight_ih_l0
        key = (weight.device, weight.dtype)
        table = self._pe_cache.get(key)
        if table is None or table.shape[0] < length:
            table = positional_encoding(length, self.d_pe, device=weight.device, dtype=weight.dtype)
            self._pe_cache[key] = table
        return table[:length]

    def size_weights(self, sizes: Sequence[int] | Tensor) -> Tensor:
        """U×max(sizes) weights for the given set sizes (differentiable, uncached)."""
        sizes = torch.as_tensor(sizes, dtype=torch.int64).cpu()
        return gpo_size_weights(sizes, self.gru, self.linear, self.positional_encoding(int(sizes.max())))

    def size_table(self, length: int) -> Tensor:
        """``length``×``length`` weights of every set size ``1..length`` (row ``n-1``: size ``n``), differentiable.

        Built from sizes that are known on the host (no device read), for the sync-free device path.
        """
        sizes = torch.arange(length, 0, -1)  # descending: packed without a sort
        return self.size_weights(sizes).flip(0)

    def cached_size_table(self, length: int) -> Tensor:
        """:meth:`size_table` without autograd, kept until the parameters change (their version counters)
        or a longer table is asked for; rebuilt every call when the parameters are inference tensors."""
        params = list(self.parameters())
        key = (params[0].device, params[0].dtype)
        if any(p.is_inference() for p in params):  # no version counters to key a cache on
            with torch.no_grad():
                return self.size_table(length)
        state = tuple((p._version, p.data_ptr()) for p in params)
        entry = self._table_cache.get(key)
        if entry is None or entry[0] != state or entry[1].shape[0] < length:
            with torch.inference_mode(False), torch.no_grad():
                entry = (state, self.size_table(length))
            self._table_cache[key] = entry
        return entry[1][:length, :length]

    def compute_weights(self, lengths: Lengths) -> Tensor:
        """B×max(lengths) weights, once per distinct size, differentiable (never cached)."""
        lens = torch.as_tensor(lengths).detach().to("cpu", torch.int64)
        return gpo_weights(lens, self.gru, self.linear, self.positional_encoding(int(lens.max())))

    def cached_weights(
        self, lengths: Lengths, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Like :meth:`compute_weights` but without autograd, reusing per-size weight vectors.

        Args:
            lengths: B set sizes.
            device: device of the result (default: the parameters').
            dtype: dtype of the result (default: the parameters').

        Returns:
            B×max(lengths) weights, detached.
        """
        params = list(self.parameters())
        device = torch.device(device) if device is not None else params[0].device
        dtype = dtype or params[0].dtype
        lens = torch.as_tensor(lengths).detach().to("cpu", torch.int64)
        sizes, inverse = torch.unique(lens, return_inverse=True)
        size_list = sizes.tolist()
        if any(p.is_inference() for p in params):  # no version counters to key a cache on
            with torch.no_grad():
                return self.size_weights(size_list).to(device, dtype)[inverse.to(device)]
        state = tuple((p._version, p.data_ptr(), p.device, p.dtype) for p in params)
        entry = self._weight_cache.get((device, dtype))
        if entry is None or entry[0] != state:
            entry = (state, {})
            self._weight_cache[(device, dtype)] = entry
        rows = entry[1]
        missing = [s for s in size_list if s not in rows]
        if missing:
            with torch.inference_mode(False), torch.no_grad():
                fresh = self.size_weights(missing).to(device, dtype)
                for r, size in enumerate(missing):
                    rows[size] = fresh[r, :size].clone()
        table = torch.zeros(len(size_list), size_list[-1], device=device, dtype=dtype)
        for r, size in enumerate(size_list):
            table[r, :size] = rows[size]
        return table[inverse.to(device)]

    def forward(self, features: Tensor, lengths: Lengths) -> tuple[Tensor, Tensor]:
        """Pool ``features`` (B×L×D, valid elements first) over their first ``lengths`` elements.

        Returns:
            ``(pooled B×D, weights B×L)``; weights past each length are exactly 0.
        """
        if _on_accelerator(features, lengths):
            return self._forward_on_device(features, lengths)
        lens = check_lengths(features, lengths)
        length = features.shape[1]
        longest = int(lens.max())
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        wide = _wide(features.dtype)  # weights stay float32 for half features (pooled in float32)
        if needs_grad:
            weights = self.compute_weights(lens).to(features.device, wide)
            tolerance = 0.0
        else:
            weights = self.cached_weights(lens, features.device, wide)
            tolerance = self.tail_tolerance
        pooled = _pool_sorted(features[:, :longest], lens, weights, self.method, tolerance)
        return pooled, F.pad(weights, (0, length - longest)).to(features.dtype)

    def _forward_on_device(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` for lengths on an accelerator, without a host-device synchronisation.

        The set sizes are never read back: the weights of every size up to the padded width come
        from one generator pass (:meth:`size_table`, whose sizes the host knows) and each set's row
        is gathered on the device. Same values and gradients as the per-distinct-size host path.
        """
        lens = _check_on_device(features, lengths)
        length = features.shape[1]
        wide = _wide(features.dtype)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            table = self.size_table(length)
        else:  # inference: one generator pass per parameter state, not per batch
            table = self.cached_size_table(length)
        weights = table.to(wide)[lens - 1]  # B×L, exactly zero past each length
        valid = length_mask(lens, length)
        pooled = _sort_pool_device(features.to(wide), weights, valid)
        return pooled.to(features.dtype), weights.to(features.dtype)
