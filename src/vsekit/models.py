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
from .encoders import TextInputs, create_image_encoder, create_text_encoder, l2norm
from .errors import DataError


def cosine_similarity(images: Tensor, texts: Tensor) -> Tensor:
    """Images × texts dot products (cosine similarity for l2-normalised embeddings)."""
    return images @ texts.t()


ORDER_BLOCK_ELEMENTS = 1 << 22
"""Elements of the images×texts×E difference block that :func:`order_similarity` materialises at a time
(16 MB in float32)."""


def order_similarity(images: Tensor, texts: Tensor, chunk: int | None = None) -> Tensor:
    """VSE++ order-embedding similarity ``s(i, c) = -|| max(0, c - i) ||_2`` (images × texts).

    The official code materialises the images×texts×E differences at once (20 GB for a 1000×5000
    evaluation matrix with E = 1024). This computes blocks of at most :data:`ORDER_BLOCK_ELEMENTS`
    differences: ``chunk`` images at a time (default: as many as fit), and the texts in parts too when
    one image row alone is larger. Without autograd (evaluation) one block buffer is reused in place and
    the blocks are written into the preallocated result, so memory stays flat however large the matrix.
    Gradients flow as usual; the gradient of a pair without violation (``c <= i`` everywhere) is 0.

    Args:
        images: N×E image embeddings.
        texts: M×E text embeddings.
        chunk: images per block (default: from the element budget).

    Returns:
        The N×M similarity matrix (values <= 0).
    """
    n_i, n_t, dim = images.shape[0], texts.shape[0], max(1, texts.shape[1])
    if n_i == 0 or n_t == 0:
        return images.new_zeros(n_i, n_t)
    cols = max(1, min(n_t, ORDER_BLOCK_ELEMENTS // dim))
    rows = chunk if chunk is not None else max(1, ORDER_BLOCK_ELEMENTS // (cols * dim))
    if torch.is_grad_enabled() and (images.requires_grad or texts.requires_grad):
        row_blocks = []
        for a in range(0, n_i, rows):
            parts = [
                -torch.linalg.vector_norm((texts[None, b : b + cols] - images[a : a + rows, None]).clamp(min=0), dim=-1)
                for b in range(0, n_t, cols)
            ]
            row_blocks.append(torch.cat(parts, dim=1))
        return torch.cat(row_blocks)
    with torch.no_grad():
        e = texts.shape[1]
        dtype = torch.promote_types(images.dtype, texts.dtype)
        out = torch.empty(n_i, n_t, dtype=dtype, device=images.device)
        buffer = torch.empty(min(rows, n_i) * cols * e, dtype=dtype, device=images.device)
        for a in range(0, n_i, rows):
            im = images[a : a + rows]
            for b in range(0, n_t, cols):
                tx = texts[b : b + cols]
                diff = buffer[: im.shape[0] * tx.shape[0] * e].view(im.shape[0], tx.shape[0], e)
                torch.sub(tx[None], im[:, None], out=diff).clamp_(min=0)
                out[a : a + rows, b : b + cols] = torch.linalg.vector_norm(diff, dim=-1).neg_()
        return out


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
        tokenizer: turns captions into token ids (a :class:`vsekit.text.Vocabulary` or a Hugging Face
            tokenizer wrapper); saved with the model.
        word_vectors: optional initial word embeddings (len(tokenizer)×word_dim).
    """

    def __init__(self, config: ModelConfig, tokenizer: Any, word_vectors: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.image_encoder = create_image_encoder(config.image, config.embed_size)
        self.text_encoder = create_text_encoder(config.text, config.embed_size, TextInputs.of(tokenizer, word_vectors))
        self.classifier = (
            nn.Linear(config.embed_size, config.instance_classes, bias=False) if config.instance_classes > 0 else None
        )
        self._similarity = SIMILARITIES[config.similarity]

    def frozen_modules(self) -> list[str]:
        """Module paths that never train in this model: what its encoders declare as ``frozen_submodules``
        (e.g. ``text_encoder.bert`` of a transformer encoder built with ``model.text.frozen``)."""
        out = []
        for name in ("image_encoder", "text_encoder"):
            out += [f"{name}.{sub}" for sub in getattr(getattr(self, name), "frozen_submodules", ())]
        return out

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
