"""Word tokenizer and vocabulary for the recurrent (BiGRU) text encoders.

The tokenizer is deterministic and needs no downloaded data. The vocabulary uses the special tokens of
SCAN / VSE++ (``<pad>``=0, ``<start>``=1, ``<end>``=2, ``<unk>``=3) and, as VSE∞ does, appends ``<mask>``
as the last index. SCAN's vocabulary JSON files (``coco_precomp_vocab.json``) can be loaded directly.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from vsekit.errors import DataError
from vsekit.io import atomic_write_json

PAD, START, END, UNK, MASK = "<pad>", "<start>", "<end>", "<unk>", "<mask>"
SPECIALS: tuple[str, ...] = (PAD, START, END, UNK)
VOCAB_FORMAT = "vsekit-vocab-1"

# A word is a run of [a-z0-9]. English contractions become their own tokens, as in the Penn Treebank
# convention used by NLTK ("don't" -> "do", "n't"; "city's" -> "city", "'s"). Every other character,
# including any other apostrophe, separates words and is dropped.
_TOKEN_RE = re.compile(
    r"[a-z0-9]+?(?=n't(?![a-z0-9]))"  # the stem before "n't"
    r"|(?<=[a-z0-9])n't(?![a-z0-9])"
    r"|(?<=[a-z0-9])'(?:s|re|ve|ll|d|m)(?![a-z0-9])"
    r"|[a-z0-9]+"
)


def tokenize(caption: str) -> list[str]:
    """Split a caption into lower-case word tokens.

    Words are the runs of ``[a-z0-9]`` of the lower-cased caption; all other characters separate words and
    are dropped. For text without apostrophes this is exactly how the Karpathy JSON ``tokens`` of RSICD are
    made. Contractions after a word are kept as separate tokens: ``"it's"`` -> ``["it", "'s"]``,
    ``"don't"`` -> ``["do", "n't"]`` (``'s 're 've 'll 'd 'm n't``; the typographic apostrophe counts too).

    Args:
        caption: the raw caption.

    Returns:
        The list of tokens (possibly empty).
    """
    return _TOKEN_RE.findall(caption.lower().replace("\u2019", "'"))


# -- Penn-Treebank-style tokenization (what nltk.word_tokenize does to a caption) ----------------------
# The official VSE++ / SCAN / VSE∞ vocabularies were built with nltk.word_tokenize on lower-cased
# captions, which keeps punctuation as tokens ("surfboard ." ) and hyphenated words whole
# ("black-and-white"). Official checkpoints are converted with this tokenizer so their inputs match.
# Written from the documented Treebank conventions; covers what occurs in captions (sentence-final
# periods, commas, colons, semicolons, quotes, brackets, ?!, "...", "--", contractions).
_TB_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TB_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), repl)
    for pattern, repl in (
        # opening quotes
        (r"([«“‘„]|`+)", r" \1 "),
        (r'^"', "``"),
        (r"(``)", r" \1 "),
        (r"([ (\[{<])(\"|'')", r"\1 `` "),
        (r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", r"\1 "),  # an opening single quote
        # punctuation
        (r"([^.])(\.)([\]\)}>\"'»”’ ]*)\s*$", r"\1 \2 \3 "),  # the sentence-final period
        (r"([:,])([^\d])", r" \1 \2"),  # a comma/colon not inside a number
        (r"([:,])$", r" \1 "),
        (r"\.{2,}", r" \g<0> "),
        (r"[;@#$%&]", r" \g<0> "),
        (r"[\u2012-\u2015]", r" \g<0> "),
        (r"[?!]", r" \g<0> "),
        (r"([^'])' ", r"\1 ' "),
        (r"[*]", r" \g<0> "),
        (r"[\]\[(){}<>]", r" \g<0> "),
        (r"--", " -- "),
        # closing quotes and contractions (the text is padded with spaces first)
        (r"^(.*)$", r" \1 "),
        (r"([»”’])", r" \1 "),
        (r"''", " '' "),
        (r'"', " '' "),
        (r"\s+", " "),
        (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "),
        (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
        (r"(?i)\b(can)(not)\b", r" \1 \2 "),
        (r"(?i)\b(d)('ye)\b", r" \1 \2 "),
        (r"(?i)\b(gim)(me)\b", r" \1 \2 "),
        (r"(?i)\b(gon)(na)\b", r" \1 \2 "),
        (r"(?i)\b(got)(ta)\b", r" \1 \2 "),
        (r"(?i)\b(lem)(me)\b", r" \1 \2 "),
        (r"(?i)\b(more)('n)\b", r" \1 \2 "),
        (r"(?i)\b(wan)(na)(?=\s)", r" \1 \2 "),
        (r"(?i) ('t)(is)\b", r" \1 \2 "),
        (r"(?i) ('t)(was)\b", r" \1 \2 "),
    )
)


def tokenize_treebank(caption: str) -> list[str]:
    """Split a lower-cased caption as ``nltk.word_tokenize`` does (Penn Treebank conventions).

    Punctuation marks are tokens of their own, hyphenated words stay whole, contractions are split
    (``"it's"`` -> ``["it", "'s"]``), and every sentence's final period is split off:
    ``"A man on a black-and-white boat."`` -> ``["a", "man", "on", "a", "black-and-white", "boat", "."]``.
    This is the tokenization of the official VSE++ / SCAN / VSE∞ vocabularies.
    """
    tokens: list[str] = []
    for sentence in _TB_SENTENCE_END.split(caption.lower().strip()):
        text = sentence
        for pattern, repl in _TB_RULES:
            text = pattern.sub(repl, text)
        tokens.extend(text.split())
    return tokens


TOKENIZERS = {"words": tokenize, "treebank": tokenize_treebank}


class Vocabulary:
    """A word <-> id mapping with the special tokens ``<pad> <start> <end> <unk>`` and ``<mask>``.

    Build one with :func:`build_vocab` or :meth:`from_words`, or load a saved one with :meth:`load`.

    Attributes:
        word2idx: word -> id.
        idx2word: id -> word.
        tokenizer: how captions are split: ``"words"`` (:func:`tokenize`, the default) or
            ``"treebank"`` (:func:`tokenize_treebank`, as the official vocabularies were built).
    """

    def __init__(self, idx2word: Sequence[str], tokenizer: str = "words") -> None:
        """Create a vocabulary from its complete id -> word list.

        Args:
            idx2word: every token in id order, including the specials. ``<mask>`` is appended if missing.
            tokenizer: ``"words"`` or ``"treebank"`` (see the class attributes).

        Raises:
            DataError: if a word is repeated or a special token is missing.
        """
        words = list(idx2word)
        if MASK not in words:
            words.append(MASK)
        word2idx: dict[str, int] = {}
        for i, word in enumerate(words):
            if not isinstance(word, str):
                raise DataError(f"vocabulary: idx2word[{i}]: expected a string, got {type(word).__name__}")
            if word in word2idx:
                raise DataError(f"vocabulary: word {word!r} appears twice (ids {word2idx[word]} and {i})")
            word2idx[word] = i
        missing = [s for s in SPECIALS if s not in word2idx]
        if missing:
            raise DataError(f"vocabulary: missing special token(s) {', '.join(missing)}")
        if tokenizer not in TOKENIZERS:
            raise DataError(f"vocabulary: tokenizer: expected one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
        self.idx2word: list[str] = words
        self.word2idx: dict[str, int] = word2idx
        self.tokenizer = tokenizer

    def with_tokenizer(self, tokenizer: str) -> Vocabulary:
        """The same words with another caption tokenizer (``"words"`` or ``"treebank"``)."""
        return Vocabulary(self.idx2word, tokenizer=tokenizer)

    @classmethod
    def from_words(cls, words: Iterable[str]) -> Vocabulary:
        """Create a vocabulary of the specials, then ``words`` in the given order, then ``<mask>``.

        Args:
            words: the ordinary words; duplicates and special tokens are skipped.

        Returns:
            The vocabulary.
        """
        reserved = set(SPECIALS) | {MASK}
        ordered = [w for w in dict.fromkeys(words) if w not in reserved]
        return cls([*SPECIALS, *ordered, MASK])

    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, word: object) -> bool:
        return word in self.word2idx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.idx2word == other.idx2word and self.tokenizer == other.tokenizer

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)})"

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>`` (0 in every vocabulary built here)."""
        return self.word2idx[PAD]

    @property
    def start_id(self) -> int:
        """Id of ``<start>``."""
        return self.word2idx[START]

    @property
    def end_id(self) -> int:
        """Id of ``<end>``."""
        return self.word2idx[END]

    @property
    def unk_id(self) -> int:
        """Id of ``<unk>``."""
        return self.word2idx[UNK]

    @property
    def mask_id(self) -> int:
        """Id of ``<mask>`` (the last id in every vocabulary built here)."""
        return self.word2idx[MASK]

    def encode(self, caption: str) -> list[int]:
        """Tokenize a caption and map it to ids: ``<start>``, the words (unknown -> ``<unk>``), ``<end>``.

        Args:
            caption: the raw caption.

        Returns:
            The list of ids; its length is the number of tokens plus 2.
        """
        unk = self.unk_id
        words = TOKENIZERS[self.tokenizer](caption)
        return [self.start_id, *(self.word2idx.get(t, unk) for t in words), self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Map ids back to a space-separated string, leaving out ``<pad>``, ``<start>`` and ``<end>``.

        Args:
            ids: token ids (ints, or anything ``int()`` accepts such as 0-d tensors).

        Returns:
            The decoded text.

        Raises:
            DataError: if an id is outside the vocabulary.
        """
        skip = {self.pad_id, self.start_id, self.end_id}
        words = []
        for raw in ids:
            i = int(raw)
            if not 0 <= i < len(self.idx2word):
                raise DataError(f"vocabulary: token id {i} is outside [0, {len(self.idx2word)})")
            if i not in skip:
                words.append(self.idx2word[i])
        return " ".join(words)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict with SCAN's keys (``word2idx``, ``idx2word``, ``idx``) and ``format``."""
        return {
            "format": VOCAB_FORMAT,
            "word2idx": dict(self.word2idx),
            "idx2word": list(self.idx2word),
            "idx": len(self.idx2word),
            "tokenizer": self.tokenizer,
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "vocabulary") -> Vocabulary:
        """Create a vocabulary from :meth:`to_dict` output or from a SCAN vocabulary JSON dict.

        SCAN stores ``idx2word`` as a dict with string keys and has no ``<mask>``; ``<mask>`` is then
        appended as the last id, as VSE∞ does.

        Args:
            d: the dict.
            source: how to name the dict in error messages (e.g. its file path).

        Returns:
            The vocabulary.

        Raises:
            DataError: if the dict is malformed.
        """
        if not isinstance(d, dict):
            raise DataError(f"{source}: expected a JSON object with word2idx/idx2word, got {type(d).__name__}")
        fmt = d.get("format", VOCAB_FORMAT)
        if fmt != VOCAB_FORMAT:
            raise DataError(f"{source}: format: expected {VOCAB_FORMAT!r}, got {fmt!r}")
        if "idx2word" in d:
            raw = d["idx2word"]
            if isinstance(raw, dict):
                try:
                    items = sorted((int(k), w) for k, w in raw.items())
                except (TypeError, ValueError):
                    raise DataError(f"{source}: idx2word: expected integer keys") from None
                if [k for k, _ in items] != list(range(len(items))):
                    raise DataError(f"{source}: idx2word: expected the keys 0..{len(items) - 1} without gaps")
                words = [w for _, w in items]
            elif isinstance(raw, list):
                words = raw
            else:
                raise DataError(f"{source}: idx2word: expected a list or an object of id -> word")
        elif isinstance(d.get("word2idx"), dict):
            pairs = sorted(d["word2idx"].items(), key=lambda kv: kv[1] if isinstance(kv[1], int) else -1)
            words = [w for w, _ in pairs]
            if [i for _, i in pairs] != list(range(len(pairs))):
                raise DataError(f"{source}: word2idx: expected the ids 0..{len(pairs) - 1} without gaps")
        else:
            raise DataError(f"{source}: expected the field idx2word (or word2idx)")
        if not all(isinstance(w, str) for w in words):
            raise DataError(f"{source}: idx2word: expected strings")
        word2idx = d.get("word2idx")
        if isinstance(word2idx, dict) and any(word2idx.get(w) != i for i, w in enumerate(words)):
            raise DataError(f"{source}: word2idx does not match idx2word")
        tokenizer = d.get("tokenizer", "words")
        if tokenizer not in TOKENIZERS:
            raise DataError(f"{source}: tokenizer: expected one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
        try:
            return cls(words, tokenizer=tokenizer)
        except DataError as e:
            raise DataError(f"{source}: {str(e).removeprefix('vocabulary: ')}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON, atomically.

        Args:
            path: destination file.

        Returns:
            The destination path.
        """
        return atomic_write_json(self.to_dict(), path, indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary written by :meth:`save` or a SCAN vocabulary JSON file.

        Args:
            path: the JSON file.

        Returns:
            The vocabulary.

        Raises:
            DataError: if the file is missing, is not JSON or is malformed.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"vocabulary file not found: {path}") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: expected a UTF-8 JSON file") from None
        except OSError as e:
            raise DataError(f"cannot read vocabulary file {path}: {e.strerror}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        return cls.from_dict(d, source=str(path))


def build_vocab(captions: Iterable[str], min_count: int = 4, tokenizer: str = "words") -> Vocabulary:
    """Build a vocabulary of the words that occur at least ``min_count`` times.

    Words are ordered by descending count, ties alphabetically, so the result is deterministic.

    Args:
        captions: raw captions (usually the train captions; never the test captions).
        min_count: minimum number of occurrences of a kept word (SCAN and VSE++ use 4).
        tokenizer: ``"words"`` (default) or ``"treebank"`` (nltk-style, as the official vocabularies).

    Returns:
        The vocabulary.
    """
    if tokenizer not in TOKENIZERS:
        raise DataError(f"tokenizer: expected one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    split = TOKENIZERS[tokenizer]
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(split(caption))
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return Vocabulary(Vocabulary.from_words(kept).idx2word, tokenizer=tokenizer)
