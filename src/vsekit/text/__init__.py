"""Tokenizers: the word vocabulary of the recurrent and convolutional text encoders, and the Hugging Face
tokenizer of the transformer ones.

A checkpoint saves its tokenizer (``to_dict()``) and :func:`tokenizer_from_dict` rebuilds it, so tokenizers
are part of a model, not of data loading. :class:`HFTokenizer` is imported on first use (it needs the
``transformers`` package, an optional dependency).
"""

from vsekit.text.tokenizers import build_tokenizer, tokenizer_from_dict
from vsekit.text.vocab import Vocabulary, build_vocab, tokenize

__all__ = ["HFTokenizer", "Vocabulary", "build_tokenizer", "build_vocab", "tokenize", "tokenizer_from_dict"]


def __getattr__(name: str):
    if name == "HFTokenizer":
        from vsekit.text.hf import HFTokenizer

        return HFTokenizer
    raise AttributeError(f"module 'vsekit.text' has no attribute {name!r}")
