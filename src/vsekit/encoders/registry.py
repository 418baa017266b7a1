"""Registries of image and text encoders: a config's ``kind`` names the class that builds it.

An image encoder is an ``nn.Module`` built as ``cls(cfg: ImageEncoderConfig, embed_size: int)`` with

* ``input_kind``: ``"features"`` (padded B×K×D feature sets + lengths) or ``"pixels"`` (B×3×H×W images);
* ``input_spec()``: a small picklable object whose ``collate(arrays, train)`` turns a list of dataset
  images (numpy arrays) into the ``(images, lengths)`` tensors ``forward`` takes;
* ``forward(images, lengths) -> B×embed_size`` *unnormalised* embeddings (the model normalises).

A text encoder is built as ``cls(cfg: TextEncoderConfig, embed_size, vocab_size, mask_id, word_vectors=None,
tokenizer=None)`` with ``forward(ids B×T, lengths B) -> B×embed_size`` unnormalised embeddings.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from ..config import ImageEncoderConfig, TextEncoderConfig
from ..errors import ConfigError

IMAGE_ENCODERS: dict[str, type[nn.Module]] = {}
TEXT_ENCODERS: dict[str, type[nn.Module]] = {}


def register_image_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make an image encoder available as ``model.image.kind = name``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        IMAGE_ENCODERS[name] = cls
        return cls

    return deco


def register_text_encoder(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a text encoder available as ``model.text.kind = name``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        TEXT_ENCODERS[name] = cls
        return cls

    return deco


def create_image_encoder(cfg: ImageEncoderConfig, embed_size: int) -> nn.Module:
    """The image encoder of ``cfg.kind``."""
    if cfg.kind not in IMAGE_ENCODERS:
        raise ConfigError(f"model.image.kind: expected one of {', '.join(sorted(IMAGE_ENCODERS))}, got {cfg.kind!r}")
    return IMAGE_ENCODERS[cfg.kind](cfg, embed_size)


def create_text_encoder(
    cfg: TextEncoderConfig,
    embed_size: int,
    vocab_size: int,
    mask_id: int,
    word_vectors: Tensor | None = None,
    tokenizer: Any = None,
) -> nn.Module:
    """The text encoder of ``cfg.kind``."""
    if cfg.kind not in TEXT_ENCODERS:
        raise ConfigError(f"model.text.kind: expected one of {', '.join(sorted(TEXT_ENCODERS))}, got {cfg.kind!r}")
    return TEXT_ENCODERS[cfg.kind](cfg, embed_size, vocab_size, mask_id, word_vectors=word_vectors, tokenizer=tokenizer)


def list_image_encoders() -> list[str]:
    """Registered image encoder kinds."""
    return sorted(IMAGE_ENCODERS)


def list_text_encoders() -> list[str]:
    """Registered text encoder kinds."""
    return sorted(TEXT_ENCODERS)
