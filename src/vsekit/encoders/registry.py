"""Registries of image and text encoders: a config's ``kind`` names the class that builds it.

An image encoder is an ``nn.Module`` built as ``cls(cfg: ImageEncoderConfig, embed_size: int)`` with

* ``input_kind``: ``"features"`` (padded B×K×D feature sets + lengths) or ``"pixels"`` (B×3×H×W images);
* ``input_spec()``: a small picklable object whose ``collate(arrays, train)`` turns a list of dataset
  images (numpy arrays) into the ``(images, lengths)`` tensors ``forward`` takes;
* ``forward(images, lengths) -> B×embed_size`` *unnormalised* embeddings (the model normalises).

A text encoder is built as ``cls(cfg: TextEncoderConfig, embed_size: int, inputs: TextInputs)`` with
``forward(ids B×T, lengths B) -> B×embed_size`` unnormalised embeddings.

Each family owns its options. The config section (``model.image`` / ``model.text``) has the fields every
family shares (``kind``, ``pooling``, ``normalize``, the augmentation rates, ``img_dim``) and the fields of
the families; a family class names the family fields it reads in ``options`` and checks its own values in an
optional ``check_config(cfg, require_data)`` classmethod (by default: the pooling must exist).
:func:`check_encoder_config` refuses a family field set to anything but its default for a kind that does not
read it, so a value that would be silently ignored is an error that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor, nn

from ..config import ImageEncoderConfig, TextEncoderConfig
from ..errors import ConfigError
from ..pooling import create_pooling



@dataclass(frozen=True)
class TextInputs:
    """What a text encoder is built from besides its config and the embedding size.

    Attributes:
        vocab_size: number of token ids (the tokenizer's length).
        mask_id: id of the mask token (text augmentation).
        word_vectors: optional vocab_size×word_dim tensor to initialise the word embeddings.
        tokenizer: the model's tokenizer (the transformer encoder builds its network from it).
    """

    vocab_size: int
    mask_id: int
    word_vectors: Tensor | None = None
    tokenizer: Any = None

    @classmethod
    def of(cls, tokenizer: Any, word_vectors: Tensor | None = None) -> TextInputs:
        """The inputs of a text encoder for ``tokenizer`` (a :class:`vsekit.text.Vocabulary` or ``HFTokenizer``)."""
        return cls(len(tokenizer), tokenizer.mask_id, word_vectors, tokenizer)


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


def create_text_encoder(cfg: TextEncoderConfig, embed_size: int, inputs: TextInputs) -> nn.Module:
    """The text encoder of ``cfg.kind``."""
    if cfg.kind not in TEXT_ENCODERS:
        raise ConfigError(f"model.text.kind: expected one of {', '.join(sorted(TEXT_ENCODERS))}, got {cfg.kind!r}")
    return TEXT_ENCODERS[cfg.kind](cfg, embed_size, inputs)


def list_image_encoders() -> list[str]:
    """Registered image encoder kinds."""
    return sorted(IMAGE_ENCODERS)


def list_text_encoders() -> list[str]:
    """Registered text encoder kinds."""
    return sorted(TEXT_ENCODERS)


def check_pooling(key: str, name: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``name`` is a registered pooling."""
    try:
        create_pooling(name)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None


def check_encoder_config(branch: str, cfg: ImageEncoderConfig | TextEncoderConfig, require_data: bool = True) -> None:
    """Check ``model.<branch>`` (``image`` or ``text``) against its family; raise :class:`ConfigError` naming the field.

    With ``require_data=False`` the options that point at files (e.g. a transformer's model folder) may be unset.
    """
    registry = IMAGE_ENCODERS if branch == "image" else TEXT_ENCODERS
    where = f"model.{branch}"
    if cfg.kind not in registry:
        raise ConfigError(f"{where}.kind: expected one of {', '.join(sorted(registry))}, got {cfg.kind!r}")
    family = registry[cfg.kind]
    readers: dict[str, list[str]] = {}
    for kind, cls in sorted(registry.items()):
        for option in getattr(cls, "options", ()):
            readers.setdefault(option, []).append(kind)
    defaults = type(cfg)()
    for option, kinds in readers.items():
        if option not in getattr(family, "options", ()) and getattr(cfg, option) != getattr(defaults, option):
            which = f"kind {kinds[0]!r} has" if len(kinds) == 1 else f"kinds {', '.join(map(repr, kinds))} have"
            raise ConfigError(f"{where}.{option}: only {which} it, got kind {cfg.kind!r}")
    check = getattr(family, "check_config", None)
    if check is not None:
        check(cfg, require_data)
    else:
        check_pooling(f"{where}.pooling", cfg.pooling)
