"""Reading the vocabulary an official model was trained with: a SCAN JSON or VSE++'s pickled ``Vocabulary``
(through an unpickler that builds nothing but a plain holder)."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, DataError, first_line

class _PickledVocabulary:
    """Stand-in for VSE++'s ``Vocabulary`` class during unpickling: it only keeps the attribute dict."""

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _VocabularyUnpickler(pickle.Unpickler):
    """Builds VSE++'s pickled ``Vocabulary`` as a :class:`_PickledVocabulary` and refuses every other class."""

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 pickles: str bytes decoded below
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if name == "Vocabulary":  # pickled from vocab.py as 'vocab.Vocabulary' or '__main__.Vocabulary'
            return _PickledVocabulary
        raise CheckpointError(
            f"{self.source}: refusing to unpickle {module}.{name} (a vocabulary pickle may only hold VSE++'s "
            f"Vocabulary object)"
        )


def _text(value: Any) -> Any:
    """Python 2 ``str`` values arrive as bytes: decode them (UTF-8, else Latin-1)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return value


def _read_vocab_pickle(path: Path, data: bytes) -> dict[str, Any]:
    """The ``word2idx`` / ``idx2word`` / ``idx`` attributes of a pickled VSE++ ``Vocabulary``."""
    try:
        obj = _VocabularyUnpickler(io.BytesIO(data), path).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  (a malformed pickle: truncated, unknown opcode, wrong structure)
        raise CheckpointError(f"{path}: not a readable vocabulary pickle ({first_line(e)})") from None
    if not isinstance(obj, _PickledVocabulary) or not isinstance(obj.state, dict):
        raise CheckpointError(f"{path}: expected a pickled Vocabulary object, got {type(obj).__name__}")
    attrs = {_text(k): v for k, v in obj.state.items()}
    word2idx = attrs.get("word2idx")
    if not isinstance(word2idx, dict):
        raise CheckpointError(f"{path}: the pickled Vocabulary has no word2idx dict")
    out: dict[str, Any] = {"word2idx": {_text(w): i for w, i in word2idx.items()}}
    if isinstance(attrs.get("idx2word"), dict):
        out["idx2word"] = {int(i) if isinstance(i, int) else _text(i): _text(w) for i, w in attrs["idx2word"].items()}
    if "idx" in attrs:
        out["idx"] = attrs["idx"]
    return out


def read_official_vocab(path: str | Path) -> tuple[Any, int]:
    """Read an official vocabulary file: a SCAN JSON or VSE++'s pickled ``Vocabulary`` object.

    The format is recognised from the content. Ids are the file's; ``<mask>`` is appended as the last id
    when missing, exactly as the VSE∞ loader does. A pickle is read by a restricted unpickler that maps the
    ``Vocabulary`` class to a plain holder and refuses every other class, so no code from the file runs.

    Args:
        path: the vocabulary file.

    Returns:
        ``(vocabulary, words_in_file)``: a :class:`vsekit.data.Vocabulary` and the number of words the file
        holds (without an appended ``<mask>``).

    Raises:
        CheckpointError: if the file is missing or malformed, or its ``idx`` counter disagrees with its words.
    """
    from ..text import Vocabulary

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: vocabulary file not found")
    data = path.read_bytes()
    if data.lstrip()[:1] == b"{":
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a valid vocabulary JSON ({first_line(e)})") from None
    elif data[:1] == b"\x80":
        raw = _read_vocab_pickle(path, data)
    else:
        raise CheckpointError(f"{path}: expected a SCAN vocabulary JSON or a pickled VSE++ Vocabulary")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object with word2idx/idx2word, got {type(raw).__name__}")
    try:
        vocab = Vocabulary.from_dict({k: v for k, v in raw.items() if k in ("word2idx", "idx2word")}, source=str(path))
    except DataError as e:
        raise CheckpointError(str(e)) from None
    vocab = vocab.with_tokenizer("treebank")  # the official vocabularies hold nltk.word_tokenize tokens
    words = len(raw["idx2word"]) if isinstance(raw.get("idx2word"), (dict, list)) else len(raw.get("word2idx", {}))
    counter = raw.get("idx")
    if counter is not None and counter != words:
        raise CheckpointError(
            f"{path}: idx is {counter!r} but the file has {words} words (the official loader gives <mask> id idx)"
        )
    return vocab, words


# ----------------------------------------------------------------------------------------------
# options -> config
