"""A plain, independent implementation of the official VSE∞ and VSE++ forward passes, for tests.

Written from the reference notes (``shared/reference/official_checkpoints.md``, ``vse_infty.md`` §2-4,
``vsepp_dualpath.md`` §1.2-1.3), step by step as the official code computes them, and driven directly by
official-layout state dicts (the key names of the released checkpoints). Nothing here uses vsekit's encoders
or pooling, so comparing ``vsekit.load(converted)`` with these functions checks the converter's key mapping
*and* that vsekit's modules compute what the official ones do:

* :func:`gpo`: GPO with the official −10000 sentinels, a full ``torch.sort`` and ``softmax(scores / 0.1)``;
  the BiGRU runs over the sin/cos encodings of the padded batch, packed by length, directions averaged;
* :func:`vse_infty_region_image`: ``fc(x) + mlp(x)`` (Linear → BatchNorm in eval → ReLU → Linear) on the
  flattened rows, GPO, ``x / (‖x‖ + 1e-8)``;
* :func:`vse_infty_bigru_text`: embedding → packed BiGRU (directions averaged) → GPO → l2norm;
* :func:`vse_infty_bert_text`: BERT last hidden state (mask ``ids != 0``) → linear → GPO → l2norm;
* :func:`vsepp_precomp_image`: ``fc`` → ``x / ‖x‖`` (no eps) unless ``no_imgnorm`` → ``abs`` if ``use_abs``;
* :func:`vsepp_gru_text`: embedding → packed GRU → output at the last valid step → l2norm (no eps) → abs;
* :func:`official_caption_ids`: ``<start>`` + word tokens + ``<end>`` with ``<unk>`` for unknown words.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

GPO_DIM = 32
SENTINEL = -10000.0


def official_caption_ids(word2idx: dict[str, int], caption: str) -> list[int]:
    """``<start>`` + tokens + ``<end>``, unknown words -> ``<unk>``.

    The official loaders split with ``nltk.word_tokenize(caption.lower())``. With nltk installed (a dev
    dependency) this uses nltk's word tokenizer itself on each sentence (sentences split after . ! ?
    followed by a space, as punkt does for captions; punkt's model is a download, so it is not used);
    without it, captions must be plain lower-case words separated by single spaces.
    """
    try:
        import re

        from nltk.tokenize import NLTKWordTokenizer
    except ImportError:
        tokens = caption.lower().split()
    else:
        tokenizer = NLTKWordTokenizer()
        tokens = [t for s in re.split(r"(?<=[.!?])\s+", caption.lower().strip()) for t in tokenizer.tokenize(s)]
    unk = word2idx["<unk>"]
    return [word2idx["<start>"], *(word2idx.get(w, unk) for w in tokens), word2idx["<end>"]]


def pad_ids(id_lists: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Zero-pad token id lists (``<pad>`` = 0) into B×T plus the B lengths."""
    lengths = torch.tensor([len(x) for x in id_lists])
    out = torch.zeros(len(id_lists), int(lengths.max()), dtype=torch.int64)
    for i, ids in enumerate(id_lists):
        out[i, : len(ids)] = torch.tensor(ids)
    return out, lengths


def pad_sets(sets: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Zero-pad K_i×D feature sets into B×Kmax×D plus the B lengths."""
    lengths = torch.tensor([s.shape[0] for s in sets])
    out = torch.zeros(len(sets), int(lengths.max()), sets[0].shape[1])
    for i, s in enumerate(sets):
        out[i, : s.shape[0]] = s
    return out, lengths


def sub_state(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix`` with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _gru(state: dict[str, Tensor], input_size: int, bidirectional: bool) -> nn.GRU:
    """An ``nn.GRU`` holding the ``weight_ih_l0 ...`` entries of ``state`` (layers counted from the keys)."""
    layers = sum(1 for k in state if k.startswith("weight_ih_l") and not k.endswith("_reverse"))
    hidden = state["weight_hh_l0"].shape[1]
    gru = nn.GRU(input_size, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
    gru.load_state_dict(state, strict=True)
    return gru.eval()


def sincos(length: int, dim: int = GPO_DIM) -> Tensor:
    """``pe[k, 2j] = sin(k w_j)``, ``pe[k, 2j+1] = cos(k w_j)``, ``w_j = 10000^(-2j/dim)``, k = 0..length-1."""
    pe = torch.zeros(length, dim)
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe


def gpo(state: dict[str, Tensor], features: Tensor, lengths: Tensor) -> Tensor:
    """Official GPO: ``state`` holds ``gru.*`` and ``linear.weight``; returns the B×D pooled features."""
    batch, max_len = features.shape[0], int(lengths.max())
    mask = (torch.arange(max_len)[None, :] < lengths[:, None])[:, :, None]  # B×L×1
    pes = sincos(max_len)[None].repeat(batch, 1, 1).masked_fill(~mask, 0)
    gru = _gru(sub_state(state, "gru."), GPO_DIM, bidirectional=True)
    packed = pack_padded_sequence(pes, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(gru(packed)[0], batch_first=True)
    out = (out[:, :, : out.shape[2] // 2] + out[:, :, out.shape[2] // 2 :]) / 2
    scores = F.linear(out, state["linear.weight"]).masked_fill(~mask, SENTINEL)
    weights = torch.softmax(scores / 0.1, dim=1)  # B×L×1
    x = features[:, :max_len].masked_fill(~mask, SENTINEL)
    x = x.sort(dim=1, descending=True)[0].masked_fill(~mask, 0)
    return (x * weights).sum(dim=1)


def l2norm_eps(x: Tensor) -> Tensor:
    """VSE∞: ``x / (‖x‖₂ + 1e-8)``."""
    return x / (x.pow(2).sum(dim=-1, keepdim=True).sqrt() + 1e-8)


def l2norm_plain(x: Tensor) -> Tensor:
    """VSE++: ``x / ‖x‖₂`` (no epsilon)."""
    return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


@torch.no_grad()
def vse_infty_region_image(state: dict[str, Tensor], features: Tensor, lengths: Tensor, normalize: bool = True) -> Tensor:
    """VSE∞ ``EncoderImageAggr`` ('basic'): fc + residual MLP (BatchNorm in eval), GPO, l2norm."""
    batch, k, dim = features.shape
    rows = features.reshape(batch * k, dim)
    fc = F.linear(rows, state["fc.weight"], state["fc.bias"])
    h = F.linear(rows, state["mlp.layers.0.weight"], state["mlp.layers.0.bias"])
    h = F.batch_norm(
        h, state["mlp.bns.0.running_mean"], state["mlp.bns.0.running_var"],
        state["mlp.bns.0.weight"], state["mlp.bns.0.bias"], training=False, eps=1e-5,
    )  # fmt: skip
    mlp = F.linear(F.relu(h), state["mlp.layers.1.weight"], state["mlp.layers.1.bias"])
    x = (mlp + fc).reshape(batch, k, -1)
    x = gpo(sub_state(state, "gpool."), x, lengths)
    return l2norm_eps(x) if normalize else x


@torch.no_grad()
def vse_infty_bigru_text(state: dict[str, Tensor], ids: Tensor, lengths: Tensor, normalize: bool = True) -> Tensor:
    """VSE∞ BiGRU ``EncoderText``: embed, packed BiGRU (directions averaged), GPO, l2norm."""
    x = F.embedding(ids, state["embed.weight"])
    gru = _gru(sub_state(state, "rnn."), x.shape[2], bidirectional=True)
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(gru(packed)[0], batch_first=True)
    half = out.shape[2] // 2
    out = (out[:, :, :half] + out[:, :, half:]) / 2
    x = gpo(sub_state(state, "gpool."), out, lengths)
    return l2norm_eps(x) if normalize else x


@torch.no_grad()
def vse_infty_bert_text(state: dict[str, Tensor], bert: Any, ids: Tensor, normalize: bool = True) -> Tensor:
    """VSE∞ BERT ``EncoderText``: ``bert`` (a Hugging Face ``BertModel`` already holding ``state``'s
    ``bert.*`` weights) over all tokens with mask ``ids != 0`` → linear → GPO with the token counts → l2norm."""
    mask = (ids != 0).long()
    hidden = bert(input_ids=ids, attention_mask=mask)[0]
    x = F.linear(hidden, state["linear.weight"], state["linear.bias"])
    x = gpo(sub_state(state, "gpool."), x, mask.sum(dim=1))
    return l2norm_eps(x) if normalize else x


@torch.no_grad()
def vsepp_precomp_image(
    state: dict[str, Tensor], features: Tensor, use_abs: bool = False, no_imgnorm: bool = False
) -> Tensor:
    """VSE++ ``EncoderImagePrecomp``: ``features`` B×img_dim → fc → l2norm (no eps) → abs."""
    x = F.linear(features, state["fc.weight"], state["fc.bias"])
    if not no_imgnorm:
        x = l2norm_plain(x)
    return x.abs() if use_abs else x


@torch.no_grad()
def vsepp_gru_text(state: dict[str, Tensor], ids: Tensor, lengths: Tensor, use_abs: bool = False) -> Tensor:
    """VSE++ ``EncoderText``: embed, packed GRU, output at step ``length - 1``, l2norm (no eps), abs."""
    x = F.embedding(ids, state["embed.weight"])
    gru = _gru(sub_state(state, "rnn."), x.shape[2], bidirectional=False)
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(gru(packed)[0], batch_first=True)
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.shape[2])
    x = l2norm_plain(out.gather(1, index).squeeze(1))
    return x.abs() if use_abs else x


def order_sim(images: Tensor, captions: Tensor) -> Tensor:
    """VSE++ order similarity ``-‖max(0, c - i)‖₂`` (images × captions)."""
    diff = captions[None, :, :] - images[:, None, :]
    return -diff.clamp(min=0).pow(2).sum(dim=2).sqrt()
