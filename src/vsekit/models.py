"""The two-branch embedding model and its inference API.

>>> import vsekit
>>> model = vsekit.load("runs/demo/gpo/best.pt")            # doctest: +SKIP
>>> t = model.encode_text(["a red car next to a small tree"])  # doctest: +SKIP
>>> i = model.encode_image([features_of_one_image])           # doctest: +SKIP
>>> model.similarity(i, t)                                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .config import ModelConfig
from .data import Vocabulary, collate_captions, collate_images
from .encoders import create_image_encoder, create_text_encoder
from .errors import DataError


class VSEModel(nn.Module):
    """Image encoder + text encoder mapping into one space; similarity is the dot product of the
    (l2-normalised) embeddings, i.e. cosine similarity.

    Args:
        config: the model config.
        vocab: the vocabulary of the text encoder (saved with the model).
        word_vectors: optional initial word embeddings (len(vocab)×word_dim).
    """

    def __init__(self, config: ModelConfig, vocab: Vocabulary, word_vectors: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.image_encoder = create_image_encoder(config.image, config.embed_size)
        self.text_encoder = create_text_encoder(
            config.text, config.embed_size, len(vocab), vocab.mask_id, word_vectors=word_vectors
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- training-time forward on batched tensors ----------------------------------------------
    def forward_image(self, features: Tensor, lengths: Tensor) -> Tensor:
        """B×K×D padded feature sets + B lengths -> B×E embeddings."""
        return self.image_encoder(features, lengths)

    def forward_text(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """B×T padded token ids + B lengths -> B×E embeddings."""
        return self.text_encoder(ids, lengths)

    @staticmethod
    def similarity(image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
        """Images × texts similarity matrix."""
        return image_embeddings @ text_embeddings.t()

    # -- inference API ----------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_image(
        self, images: Tensor | np.ndarray | Sequence[np.ndarray | Tensor], batch_size: int = 256
    ) -> Tensor:
        """Embed images given as precomputed feature sets.

        Args:
            images: an N×K×D array/tensor (every image has K vectors), or a sequence of K_i×D arrays
                (variable set sizes; one image is ``[array]``).
            batch_size: images per forward pass.

        Returns:
            N×E float32 embeddings on the CPU.
        """
        with self._eval_mode():
            if isinstance(images, (np.ndarray, Tensor)):
                if images.ndim != 3:
                    shape = tuple(images.shape)
                    raise DataError(f"images: expected N×K×D features or a list of K×D arrays, got shape {shape}")
                items: Sequence = [images[i] for i in range(images.shape[0])]
            else:
                items = list(images)
            dim = self.config.image.img_dim
            out = []
            for start in range(0, len(items), batch_size):
                chunk = [_as_float32(x) for x in items[start : start + batch_size]]
                for x in chunk:
                    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] == 0:
                        raise DataError(f"images: expected each image as a K×{dim} feature set, got shape {x.shape}")
                feats, lengths = collate_images(chunk)
                out.append(self.forward_image(feats.to(self.device), lengths.to(self.device)).float().cpu())
            return torch.cat(out) if out else torch.empty(0, self.config.embed_size)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Embed sentences. Returns len(texts)×E float32 embeddings on the CPU."""
        if isinstance(texts, str):
            raise DataError("texts: expected a list of strings, got a single string (wrap it in a list)")
        with self._eval_mode():
            out = []
            for start in range(0, len(texts), batch_size):
                ids = [self.vocab.encode(t) for t in texts[start : start + batch_size]]
                tokens, lengths = collate_captions(ids, self.vocab.pad_id)
                out.append(self.forward_text(tokens.to(self.device), lengths.to(self.device)).float().cpu())
            return torch.cat(out) if out else torch.empty(0, self.config.embed_size)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode inside the block, the previous mode after it."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)


def _as_float32(x: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def create_model(config: ModelConfig, vocab: Vocabulary, word_vectors: Tensor | None = None) -> VSEModel:
    """Build a :class:`VSEModel` from its config."""
    return VSEModel(config, vocab, word_vectors=word_vectors)
