"""Which tokenizer a text encoder uses, and rebuilding one from a checkpoint.

A tokenizer turns a caption into token ids and is saved inside every checkpoint (``to_dict()``):

* :class:`vsekit.text.Vocabulary` — words of the training captions (BiGRU, GRU, text CNN);
* :class:`vsekit.text.HFTokenizer` — a Hugging Face tokenizer read from a local model folder
  (transformer text encoders); its files travel inside the checkpoint.

Both offer ``encode(caption) -> list[int]``, ``pad_id``, ``mask_id``, ``len()`` and ``to_dict()``.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..config import TextEncoderConfig
from ..errors import CheckpointError, ConfigError
from .vocab import Vocabulary, build_vocab


def build_tokenizer(cfg: TextEncoderConfig, captions: Iterable[str], min_count: int = 4) -> Any:
    """The tokenizer for a new model: a vocabulary of ``captions``, or the transformer's own tokenizer."""
    if cfg.kind == "transformer":
        if not cfg.transformer_path:
            raise ConfigError("model.text.transformer_path: required for kind 'transformer' (a local model folder)")
        from .hf import HFTokenizer

        return HFTokenizer.from_pretrained(cfg.transformer_path, max_length=cfg.max_length)
    return build_vocab(captions, min_count=min_count)


def tokenizer_from_dict(d: Any, source: str = "checkpoint") -> Any:
    """Rebuild the tokenizer saved by ``to_dict()``."""
    if isinstance(d, dict) and d.get("type") == "hf":
        from .hf import HFTokenizer

        try:
            return HFTokenizer.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: stored tokenizer is invalid ({e})") from None
    return Vocabulary.from_dict(d, source=source)
