"""Image and text encoders.

* :class:`PrecompImageEncoder`: a set of precomputed region (or grid) features -> fc plus a two-layer
  residual MLP with BatchNorm (VSE∞ region encoder) -> pooling -> l2 normalisation. In training, size
  augmentation drops each region with probability ``size_augment``.
* :class:`GRUTextEncoder`: the VSE++ text encoder, a unidirectional GRU's last hidden state.
* :class:`BiGRUTextEncoder`: word embeddings -> bidirectional GRU with the two directions averaged ->
  pooling over the words -> l2 normalisation. In training, text augmentation touches each token with
  probability ``augment``: 50% of those become ``<mask>``, 10% a random word, 40% are deleted.

Both augmentations work on padded tensors with lengths, vectorised, on any device.
Submodule names follow the official VSE∞ checkpoints (``fc``, ``mlp.layers``, ``mlp.bns``, ``gpool``,
``embed``, ``rnn``) so that official weights map onto them one to one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .config import ImageEncoderConfig, TextEncoderConfig
from .errors import DataError
from .pooling import create_pooling


def l2norm(x: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """``x / (||x||_2 + eps)`` along ``dim`` (the official VSE∞ form: eps added to the norm)."""
    return x / (x.norm(dim=dim, keepdim=True) + eps)


def compact(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Move the kept entries of each row to the front, in their original order.

    Args:
        x: B×L or B×L×D padded tensor.
        keep: B×L boolean mask of the entries to keep (already false on padding).

    Returns:
        ``(compacted, lengths)``: same shape as ``x`` (dropped entries moved to the tail, where they
        are padding now) and the new B lengths.
    """
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    index = order if x.dim() == 2 else order[:, :, None].expand_as(x)
    return x.gather(1, index), keep.sum(dim=1)


def valid_mask(lengths: Tensor, max_len: int) -> Tensor:
    """B×max_len boolean mask, true at positions < length."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def drop_set_elements(features: Tensor, lengths: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """VSE∞ size augmentation: keep each valid element independently with probability ``1 - p``.

    A set that would lose every element keeps all of them. Returns the compacted features and lengths.
    """
    mask = valid_mask(lengths, features.shape[1])
    keep = mask & (torch.rand(mask.shape, device=features.device) >= p)
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, mask)
    return compact(features, keep)


def augment_tokens(
    ids: Tensor, lengths: Tensor, p: float, vocab_size: int, mask_id: int
) -> tuple[Tensor, Tensor]:
    """VSE∞ text augmentation on padded token ids (B×T).

    Each token, ``<start>``/``<end>`` included as in the official code, is touched with probability
    ``p``; a touched token becomes ``mask_id`` (half of the cases), a uniformly random id (a tenth) or is
    deleted (the remaining 40%). A caption never loses all its tokens.
    """
    mask = valid_mask(lengths, ids.shape[1])
    u = torch.rand(ids.shape, device=ids.device)
    to_mask = mask & (u < 0.5 * p)
    to_random = mask & (u >= 0.5 * p) & (u < 0.6 * p)
    keep = mask & ((u < 0.6 * p) | (u >= p))
    random_ids = torch.randint(0, vocab_size, ids.shape, device=ids.device)
    ids = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    ids = torch.where(to_random, random_ids, ids)
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, mask)
    return compact(ids, keep)


class MLP(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Linear on every element of a set (the VSE∞ ``MLP``).

    BatchNorm statistics are computed over the valid elements only (the official code also counts the
    zero padding). A second BatchNorm exists only so that official checkpoints load key for key; like
    the original it is never applied.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim)])
        self.bns = nn.ModuleList([nn.BatchNorm1d(hidden), nn.BatchNorm1d(out_dim)])

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x``: B×L×in, ``mask``: B×L valid positions. Returns B×L×out (padding rows are zeros)."""
        rows = x[mask]  # N_valid × in
        h = torch.relu(self.bns[0](self.layers[0](rows)))
        out = self.layers[1](h)
        full = out.new_zeros(x.shape[0], x.shape[1], out.shape[-1])
        full[mask] = out
        return full


class PrecompImageEncoder(nn.Module):
    """Precomputed feature sets -> joint embedding (VSE∞ ``EncoderImageAggr``).

    Args:
        cfg: the image encoder config.
        embed_size: joint embedding size.
    """

    def __init__(self, cfg: ImageEncoderConfig, embed_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(cfg.img_dim, embed_size)
        r = math.sqrt(6.0) / math.sqrt(cfg.img_dim + embed_size)
        nn.init.uniform_(self.fc.weight, -r, r)
        nn.init.zeros_(self.fc.bias)
        self.mlp = MLP(cfg.img_dim, embed_size // 2, embed_size) if cfg.mlp else None
        self.gpool = create_pooling(cfg.pooling)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """``features``: B×K×img_dim padded sets, ``lengths``: B set sizes. Returns B×embed_size."""
        if self.training and self.cfg.size_augment > 0:
            features, lengths = drop_set_elements(features, lengths, self.cfg.size_augment)
        x = self.fc(features)
        if self.mlp is not None:
            x = x + self.mlp(features, valid_mask(lengths, features.shape[1]))
        pooled, _ = self.gpool(x, lengths)
        return l2norm(pooled) if self.cfg.normalize else pooled


class _RNNTextEncoder(nn.Module):
    """What the GRU text encoders share: word embeddings, a GRU, and text augmentation in training."""

    def __init__(
        self,
        cfg: TextEncoderConfig,
        embed_size: int,
        vocab_size: int,
        mask_id: int,
        word_vectors: Tensor | None,
        bidirectional: bool,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.embed = nn.Embedding(vocab_size, cfg.word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        if word_vectors is not None:
            if tuple(word_vectors.shape) != (vocab_size, cfg.word_dim):
                shape = tuple(word_vectors.shape)
                raise DataError(f"word vectors: expected shape ({vocab_size}, {cfg.word_dim}), got {shape}")
            with torch.no_grad():
                self.embed.weight.copy_(word_vectors)
        self.rnn = nn.GRU(cfg.word_dim, embed_size, cfg.num_layers, batch_first=True, bidirectional=bidirectional)

    def run_rnn(self, ids: Tensor, lengths: Tensor) -> tuple[PackedSequence, Tensor, Tensor]:
        """Augment (in training), embed and run the GRU over the packed captions.

        Returns:
            ``(packed outputs, last hidden states layers·dirs×B×H, lengths after augmentation)``.
        """
        if self.training and self.cfg.augment > 0:
            ids, lengths = augment_tokens(ids, lengths, self.cfg.augment, self.vocab_size, self.mask_id)
        packed = pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, hidden = self.rnn(packed)
        return out, hidden, lengths


class BiGRUTextEncoder(_RNNTextEncoder):
    """Token ids -> joint embedding (VSE∞ BiGRU ``EncoderText``).

    Args:
        cfg: the text encoder config.
        embed_size: joint embedding size (= GRU hidden size; the two directions are averaged).
        vocab_size: number of token ids.
        mask_id: id of ``<mask>`` used by text augmentation.
        word_vectors: optional vocab_size×word_dim tensor to initialise the embeddings.
    """

    def __init__(
        self, cfg: TextEncoderConfig, embed_size: int, vocab_size: int, mask_id: int, word_vectors: Tensor | None = None
    ) -> None:
        super().__init__(cfg, embed_size, vocab_size, mask_id, word_vectors, bidirectional=True)
        self.gpool = create_pooling(cfg.pooling)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """``ids``: B×T padded token ids, ``lengths``: B caption lengths. Returns B×embed_size."""
        packed, _, lengths = self.run_rnn(ids, lengths)
        out, _ = pad_packed_sequence(packed, batch_first=True, total_length=ids.shape[1])
        half = out.shape[-1] // 2
        out = (out[..., :half] + out[..., half:]) / 2
        pooled, _ = self.gpool(out, lengths)
        return l2norm(pooled) if self.cfg.normalize else pooled


class GRUTextEncoder(_RNNTextEncoder):
    """Token ids -> joint embedding with a unidirectional GRU's last hidden state (VSE++ ``EncoderText``).

    Args:
        cfg: the text encoder config (``kind='gru'``; ``pooling`` must be ``'last'``).
        embed_size: joint embedding size (= GRU hidden size).
        vocab_size: number of token ids.
        mask_id: id of ``<mask>`` (used only when ``cfg.augment > 0``).
        word_vectors: optional vocab_size×word_dim tensor to initialise the embeddings.
    """

    def __init__(
        self, cfg: TextEncoderConfig, embed_size: int, vocab_size: int, mask_id: int, word_vectors: Tensor | None = None
    ) -> None:
        super().__init__(cfg, embed_size, vocab_size, mask_id, word_vectors, bidirectional=False)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """``ids``: B×T padded token ids, ``lengths``: B caption lengths. Returns B×embed_size."""
        _, hidden, _ = self.run_rnn(ids, lengths)
        out = hidden[-1]  # the top layer's state at each sequence's last valid step
        return l2norm(out) if self.cfg.normalize else out


TEXT_ENCODERS: dict[str, type[nn.Module]] = {"bigru": BiGRUTextEncoder, "gru": GRUTextEncoder}
IMAGE_ENCODERS: dict[str, type[nn.Module]] = {"precomp": PrecompImageEncoder}


def create_text_encoder(
    cfg: TextEncoderConfig, embed_size: int, vocab_size: int, mask_id: int, word_vectors: Tensor | None = None
) -> nn.Module:
    """The text encoder of ``cfg.kind``."""
    return TEXT_ENCODERS[cfg.kind](cfg, embed_size, vocab_size, mask_id, word_vectors=word_vectors)


def create_image_encoder(cfg: ImageEncoderConfig, embed_size: int) -> nn.Module:
    """The image encoder of ``cfg.kind``."""
    return IMAGE_ENCODERS[cfg.kind](cfg, embed_size)


def load_word_vectors(path: str | Path, idx2word: list[str], dim: int) -> tuple[Tensor, int]:
    """Read a GloVe-style text file (``word v1 ... v_dim`` per line) for the words of a vocabulary.

    Words absent from the file keep a U(-0.1, 0.1) initialisation.

    Returns:
        ``(vectors, found)``: a len(idx2word)×dim tensor and the number of vocabulary words found.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: word-vector file not found")
    index = {w: i for i, w in enumerate(idx2word)}
    gen = torch.Generator().manual_seed(0)
    vectors = torch.empty(len(idx2word), dim).uniform_(-0.1, 0.1, generator=gen)
    found = 0
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
