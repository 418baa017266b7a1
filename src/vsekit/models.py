"""The two-branch embedding model and its inference API.

>>> import vsekit
>>> model = vsekit.load("runs/demo/gpo/best.pt")            # doctest: +SKIP
>>> t = model.encode_text(["a red car next to a small tree"])  # doctest: +SKIP
>>> i = model.encode_image([features_of_one_image])           # doctest: +SKIP
>>> model.similarity(i, t)                                     # doctest: +SKIP

A model trained on extracted features also takes photos when it knows its extractor (``vsekit.load`` tells it
what the checkpoint records): ``vsekit.load("rsicd-aerial").encode_image(["photo.jpg"])``.
"""

from __future__ import annotations

import contextlib
import os
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


def mean_over_views(embeddings: list[Tensor], normalize: bool) -> Tensor:
    """The test-time view average (``data.eval_views``): the mean of the N×E embeddings of the plain images
    (first) and of each view, re-normalised when the model normalises its image embeddings. One view
    (the plain images alone) is returned as is."""
    if len(embeddings) == 1:
        return embeddings[0]
    emb = torch.stack(embeddings).mean(0)
    return nn.functional.normalize(emb, dim=-1) if normalize else emb


def is_photo(item: Any) -> bool:
    """Whether an ``encode_image`` item is a photo (a file path, a PIL image, an H×W×3 uint8 array) rather than
    features."""
    if isinstance(item, (str, os.PathLike)) or type(item).__module__.startswith("PIL."):
        return True
    return isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 and item.shape[-1] == 3


def embed_photos(model: VSEModel, extractor: Any, photos: Sequence[Any], views: Sequence[str]) -> Tensor:
    """Embeddings of photos for a model that reads features: ``extractor`` (a
    :class:`vsekit.backbones.extractor.FeatureExtractor`) turns them into features for the photos themselves and
    for each of ``views``, and the embedding is the mean over those (:func:`mean_over_views`)."""
    grids = extractor(list(photos), (None, *views))
    return mean_over_views([model.encode_image(g) for g in grids], model.config.image.normalize)


PHOTO_BATCH = 16
"""The most photos a feature model's extractor reads at a time in :meth:`VSEModel.encode_image` (fewer when its
``batch_size`` is smaller)."""


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
        self.extractor_settings: dict[str, Any] | None = None
        self.photo_views: tuple[str, ...] = ()
        self._extractor: Any = None

    def use_extractor(self, settings: dict[str, Any] | None, views: Sequence[str] = ()) -> None:
        """Let :meth:`encode_image` take photos although this model reads features: they are turned into
        features by the extractor that ``settings`` describe (a ``features.json`` of ``vsekit extract``, as the
        checkpoint records it) and averaged over ``views`` too, as the model was evaluated. Built on first use."""
        self.extractor_settings = settings
        self.photo_views = tuple(views)
        self._extractor = None

    def photo_extractor(self) -> Any:
        """The :class:`vsekit.backbones.extractor.FeatureExtractor` of :meth:`use_extractor` on this model's
        device (None when the model reads photos itself or knows no extractor)."""
        if self.extractor_settings is None or self.image_input.kind != "features":
            return None
        if self._extractor is None:
            from .backbones.extractor import FeatureExtractor

            self._extractor = FeatureExtractor.from_metadata(self.extractor_settings, "the model's recorded extractor", str(self.device))
        return self._extractor

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
            images: for feature models an N×K×D array/tensor, N×D global feature vectors (one per image, as
                VSE++'s precomputed features), or a sequence of K_i×D arrays (variable set sizes; one image is
                ``[array]``), or a sequence of photos when the model knows its extractor (:meth:`use_extractor`);
                for raw-image models a sequence of H×W×3 uint8 arrays (or PIL images / file paths, see the image
                encoder).
            batch_size: images per forward pass.

        Returns:
            N×E float32 embeddings on the CPU.
        """
        spec = self.image_input
        with self._eval_mode():
            if isinstance(images, (np.ndarray, Tensor)):
                if spec.kind == "features" and images.ndim == 2:
                    images = images[:, None, :]
                if spec.kind == "features" and images.ndim != 3:
                    shape = tuple(images.shape)
                    raise DataError(f"images: expected N×K×D or N×D features, or a list of K×D arrays, got shape {shape}")
                items: Sequence = [images[i] for i in range(images.shape[0])]
            else:
                items = list(images)
            if spec.kind == "features" and any(is_photo(x) for x in items):
                return self._encode_photos(items, min(batch_size, PHOTO_BATCH))
            out = []
            for start in range(0, len(items), batch_size):
                batch, lengths = spec.collate(items[start : start + batch_size], train=False)
                out.append(self.forward_image(batch.to(self.device), lengths.to(self.device)).float().cpu())
            return torch.cat(out) if out else torch.empty(0, self.config.embed_size)

    def _encode_photos(self, photos: list[Any], batch: int) -> Tensor:
        if not all(is_photo(x) for x in photos):
            raise DataError("images: give photos or feature arrays, not both in one call")
        extractor = self.photo_extractor()
        if extractor is None:
            raise DataError(
                "images: this model reads extracted features and does not know how they were made (a checkpoint "
                "without a recorded extractor): give K×D feature arrays from 'vsekit extract'"
            )
        chunks = [photos[i : i + batch] for i in range(0, len(photos), batch)]
        return torch.cat([embed_photos(self, extractor, c, self.photo_views) for c in chunks])

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Embed sentences. Returns len(texts)×E float32 embeddings on the CPU, in the order given.

        Sentences run in batches of similar token counts (sorted by length), which spares a transformer most of
        the padding. Each sentence's embedding
        does not depend on the others in its batch (``tests/test_registry_sweep.py`` checks it for every preset).
        """
        if isinstance(texts, str):
            raise DataError("texts: expected a list of strings, got a single string (wrap it in a list)")
        ids = [self.tokenizer.encode(t) for t in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # batches of similar lengths: little padding
        out = torch.empty(len(ids), self.config.embed_size)
        with self._eval_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                tokens, lengths = collate_captions([ids[i] for i in rows], self.tokenizer.pad_id)
                out[rows] = self.forward_text(tokens.to(self.device), lengths.to(self.device)).float().cpu()
        return out

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
