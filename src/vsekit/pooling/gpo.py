"""GPO, VSE∞'s Generalized Pooling Operator: rank weights that a BiGRU generates from sinusoidal encodings of
the set size, applied to each dimension's sorted values."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vsekit.errors import ConfigError, DataError

from . import sets
from .registry import SetPooling, register_pooling
from .sets import Lengths, accumulation_dtype, check_lengths, check_lengths_on_device, length_mask
from .sortnet import SORT_METHODS, pool_validated, sort_pool_on_device

GPO_TEMPERATURE = 0.1
"""Softmax temperature of the GPO weight generator (fixed in VSE∞)."""


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
        if method not in SORT_METHODS:
            raise ConfigError(f"unknown sort method {method!r}; expected one of {', '.join(SORT_METHODS)}")
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
        if sets.on_accelerator(features, lengths):
            return self._forward_on_device(features, lengths)
        lens = check_lengths(features, lengths)
        length = features.shape[1]
        longest = int(lens.max())
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        wide = accumulation_dtype(features.dtype)  # weights stay float32 for half features (pooled in float32)
        if needs_grad:
            weights = self.compute_weights(lens).to(features.device, wide)
            tolerance = 0.0
        else:
            weights = self.cached_weights(lens, features.device, wide)
            tolerance = self.tail_tolerance
        pooled = pool_validated(features[:, :longest], lens, weights, self.method, tolerance)
        return pooled, F.pad(weights, (0, length - longest)).to(features.dtype)

    def _forward_on_device(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` for lengths on an accelerator, without a host-device synchronisation.

        The set sizes are never read back: the weights of every size up to the padded width come
        from one generator pass (:meth:`size_table`, whose sizes the host knows) and each set's row
        is gathered on the device. Same values and gradients as the per-distinct-size host path.
        """
        lens = check_lengths_on_device(features, lengths)
        length = features.shape[1]
        wide = accumulation_dtype(features.dtype)
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            table = self.size_table(length)
        else:  # inference: one generator pass per parameter state, not per batch
            table = self.cached_size_table(length)
        weights = table.to(wide)[lens - 1]  # B×L, exactly zero past each length
        valid = length_mask(lens, length)
        pooled = sort_pool_on_device(features.to(wide), weights, valid)
        return pooled.to(features.dtype), weights.to(features.dtype)
