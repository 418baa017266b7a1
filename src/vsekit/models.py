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
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .config import ModelConfig
from .data import collate_captions
from .encoders import create_image_encoder, create_text_encoder, l2norm
from .errors import DataError


def cosine_similarity(images: Tensor, texts: Tensor) -> Tensor:
    """Images × texts dot products (cosine similarity for l2-normalised embeddings)."""
    return images @ texts.t()


def order_similarity(images: Tensor, texts: Tensor, chunk: int = 64) -> Tensor:
    """VSE++ order-embedding similarity ``s(i, c) = -|| max(0, c - i) ||_2`` (images × texts).

    The official code materialises images×texts×E at once; this computes ``chunk`` images at a time so
    that evaluation-size matrices fit in memory. Gradients flow as usual.
    """
    rows = []
    for start in range(0, images.shape[0], chunk):
        diff = texts[None, :, :] - images[start : start + chunk, None, :]
        rows.append(-diff.clamp(min=0).pow(2).sum(-1).clamp(min=1e-12).sqrt())
    return torch.cat(rows) if rows else images.new_zeros(0, texts.shape[0])


SIMILARITIES = {"cosine": cosine_similarity, "order": order_similarity}


class VSEModel(nn.Module):
    """Image encoder + text encoder mapping into one space.

    The encoders return unnormalised embeddings; the model l2-normalises them (``normalize`` of each
    branch's config) and, for order embeddings, takes their absolute value (``use_abs``). The similarity
    is the dot product (cosine) or the order-embedding similarity (``config.similarity``). With
    ``config.instance_classes > 0`` the model also holds the Dual-Path instance classifier, one linear
    layer shared by both branches.

    Args:
        config: the model config.
        tokenizer: turns captions into token ids (a :class:`vsekit.data.Vocabulary` or a Hugging Face
            tokenizer wrapper); saved with the model.
        word_vectors: optional initial word embeddings (len(tokenizer)×word_dim).
    """

    def __init__(self, config: ModelConfig, tokenizer: Any, word_vectors: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.image_encoder = create_image_encoder(config.image, config.embed_size)
        self.text_encoder = create_text_encoder(
            config.text, config.embed_size, len(tokenizer), tokenizer.mask_id, word_vectors=word_vectors, tokenizer=tokenizer
        )
        self.classifier = (
            nn.Linear(config.embed_size, config.instance_classes, bias=False) if config.instance_classes > 0 else None
        )
        self._similarity = SIMILARITIES[config.similarity]

    @property
    def vocab(self) -> Any:
        """The tokenizer (kept under its older name)."""
        return self.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_input(self) -> Any:
        """What the image encoder takes: ``.kind`` (``features`` | ``pixels``) and ``.collate(arrays, train)``."""
        return self.image_encoder.input_spec()

    # -- training-time forward on batched tensors ----------------------------------------------
    def _finish(self, raw: Tensor, normalize: bool) -> Tensor:
        out = l2norm(raw) if normalize else raw
        return out.abs() if self.config.use_abs else out

    def forward_image(self, images: Tensor, lengths: Tensor, return_raw: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Batched images (padded B×K×D features + lengths, or B×3×H×W pixels) -> B×E embeddings.

        With ``return_raw`` also the encoder's unnormalised output (the instance classifier's input).
        """
        raw = self.image_encoder(images, lengths)
        emb = self._finish(raw, self.config.image.normalize)
        return (emb, raw) if return_raw else emb

    def forward_text(self, ids: Tensor, lengths: Tensor, return_raw: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """B×T padded token ids + B lengths -> B×E embeddings (and the raw output with ``return_raw``)."""
        raw = self.text_encoder(ids, lengths)
        emb = self._finish(raw, self.config.text.normalize)
        return (emb, raw) if return_raw else emb

    def classify(self, raw: Tensor, dropout: float = 0.0) -> Tensor:
        """Dual-Path instance logits of raw branch outputs: shared classifier on dropout(relu(raw))."""
        if self.classifier is None:
            raise RuntimeError("this model has no instance classifier (model.instance_classes = 0)")
        return self.classifier(nn.functional.dropout(torch.relu(raw), dropout, self.training))

    def similarity(self, image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
        """Images × texts similarity matrix."""
        return self._similarity(image_embeddings, text_embeddings)

    # -- inference API ----------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_image(self, images: Any, batch_size: int = 256) -> Tensor:
        """Embed images.

        Args:
            images: for feature models an N×K×D array/tensor or a sequence of K_i×D arrays (variable set
                sizes; one image is ``[array]``); for raw-image models a sequence of H×W×3 uint8 arrays
                (or PIL images / file paths, see the image encoder).
            batch_size: images per forward pass.

        Returns:
            N×E float32 embeddings on the CPU.
        """
        spec = self.image_input
        with self._eval_mode():
            if isinstance(images, (np.ndarray, Tensor)):
                if spec.kind == "features" and images.ndim != 3:
                    shape = tuple(images.shape)
                    raise DataError(f"images: expected N×K×D features or a list of K×D arrays, got shape {shape}")
                items: Sequence = [images[i] for i in range(images.shape[0])]
            else:
                items = list(images)
            out = []
            for start in range(0, len(items), batch_size):
                batch, lengths = spec.collate(items[start : start + batch_size], train=False)
                out.append(self.forward_image(batch.to(self.device), lengths.to(self.device)).float().cpu())
            return torch.cat(out) if out else torch.empty(0, self.config.embed_size)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Embed sentences. Returns len(texts)×E float32 embeddings on the CPU."""
        if isinstance(texts, str):
            raise DataError("texts: expected a list of strings, got a single string (wrap it in a list)")
        with self._eval_mode():
            out = []
            for start in range(0, len(texts), batch_size):
                ids = [self.tokenizer.encode(t) for t in texts[start : start + batch_size]]
                tokens, lengths = collate_captions(ids, self.tokenizer.pad_id)
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


def create_model(config: ModelConfig, tokenizer: Any, word_vectors: Tensor | None = None) -> VSEModel:
    """Build a :class:`VSEModel` from its config."""
    return VSEModel(config, tokenizer, word_vectors=word_vectors)
