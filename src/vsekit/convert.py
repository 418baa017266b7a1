"""Import official VSE∞ and VSE++ checkpoints as native vsekit checkpoints.

    vsekit convert model_best.pth vse_infty_bigru.pt --vocab coco_precomp_vocab.json   # VSE∞, BiGRU branch
    vsekit convert model_best.pth vse_infty_bert.pt --bert ./bert-base-uncased         # VSE∞, BERT branch
    vsekit convert model_best.pth.tar vsepp.pt --vocab coco_precomp_vocab.pkl          # VSE++ (precomp)

An official checkpoint is ``{'epoch', 'model': [image_state, text_state], 'best_rsum', 'opt', 'Eiters'}``
with the training options pickled as an ``argparse.Namespace``. It is read with
``torch.load(weights_only=True)``, allowing that one class and nothing else; DataParallel ``module.``
prefixes are stripped. The layout is recognised from the weights (:func:`detect_kind`):

* ``vse_infty_bigru``: VSE∞ ``bigru`` branch. Image: ``fc`` + ``mlp.layers/bns`` + ``gpool`` (precomputed
  regions, ``precomp_enc_type='basic'``); text: ``embed`` + bidirectional ``rnn`` + ``gpool``. Needs the
  SCAN vocabulary JSON it was trained with (``<mask>`` is appended as the last id, as the official loader does).
* ``vse_infty_bert``: VSE∞ ``master`` branch. The same image encoder; text: ``bert.*`` + ``linear`` +
  ``gpool``. Needs the local BERT folder it was trained from (its config and tokenizer; the weights come
  from the checkpoint).
* ``vsepp``: VSE++ with precomputed features. Image: ``fc``; text: ``embed`` + unidirectional ``rnn`` (last
  state). ``opt.measure``, ``opt.use_abs`` and ``opt.no_imgnorm`` carry over. Needs the vocabulary: VSE++'s
  pickled ``Vocabulary`` object (read by a restricted unpickler that builds nothing but a plain holder for
  it) or a SCAN JSON. The embedding table gets one extra row for ``<mask>`` (zeros; used only by text
  augmentation, which VSE++ models do not train with).

Sizes (embedding, feature and word dimensions, GRU layers, vocabulary) come from the weight shapes; the
training options (margin, hardest negatives and their warm-up, learning rate and its decay, epochs, batch
size, normalisation flags, similarity) from ``opt``, on top of the matching preset. The result is written
with :func:`vsekit.checkpoint.save_checkpoint`, so :func:`vsekit.load`, ``vsekit eval`` and ``init_from``
take it like any trained model; the weights are loaded strictly (every key and shape must match).

Not supported (a clear error says so): VSE∞ grid models (a CNN backbone in ``model[0]``) and VSE++
full-image models (a CNN under ``cnn.``).

Tokenisation: VSE∞-BiGRU and VSE++ were trained on ``nltk.word_tokenize`` tokens, which keep punctuation
(``"."``, ``","`` are vocabulary words there) and hyphenated words whole; converted vocabularies therefore
use the ``treebank`` tokenizer (:func:`vsekit.text.vocab.tokenize_treebank`, checked token for token
against nltk's word tokenizer on every RSICD caption), so converted models see the official ids.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import TrainConfig
from .configure import validate
from .errors import CheckpointError, ConfigError, DataError

__all__ = [
    "KINDS",
    "OfficialCheckpoint",
    "convert_official",
    "detect_kind",
    "read_official_checkpoint",
    "read_official_vocab",
]

KINDS: tuple[str, ...] = ("vse_infty_bigru", "vse_infty_bert", "vsepp")
"""The official layouts :func:`convert_official` understands (``kind="auto"`` detects one)."""

_PRESETS = {"vse_infty_bigru": "vse_infty_region_bigru", "vse_infty_bert": "vse_infty_region_transformer"}
_DESCRIPTIONS = {
    "vse_infty_bigru": "VSE∞ BiGRU (region features + BiGRU text)",
    "vse_infty_bert": "VSE∞ BERT (region features + BERT text)",
    "vsepp": "VSE++ (precomputed features + GRU text)",
}
# Deterministic buffers that some transformers versions save in the state dict and others do not.
_BERT_OPTIONAL_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")


@dataclass
class OfficialCheckpoint:
    """The parts of an official checkpoint file.

    Attributes:
        path: the file.
        image_state: ``model[0]``, the image encoder's state dict (``module.`` prefixes stripped).
        text_state: ``model[1]``, the text encoder's state dict (``module.`` prefixes stripped).
        opt: the training options (``vars(opt)``; empty when the file has none).
        epoch: the stored ``epoch`` entry, if any.
        best_rsum: the stored ``best_rsum`` entry, if any.
        iterations: the stored ``Eiters`` entry (optimisation steps), if any.
    """

    path: Path
    image_state: dict[str, Tensor]
    text_state: dict[str, Tensor]
    opt: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    best_rsum: float | None = None
    iterations: int | None = None


# ----------------------------------------------------------------------------------------------
# reading


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _few(names: list[str], n: int = 4, quote: bool = True) -> str:
    """``'a', 'b', 'c' and 3 more`` (names as they are with ``quote=False``)."""
    shown = ", ".join(repr(x) if quote else x for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _encoder_state(raw: Any, index: int, path: Path) -> dict[str, Tensor]:
    """``model[index]`` as a str -> Tensor dict with DataParallel ``module.`` prefixes removed."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: model[{index}]: expected a state dict, got {type(raw).__name__}")
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: model[{index}][{key!r}]: expected a tensor, got {type(value).__name__}")
        name = key.removeprefix("module.")
        if name in state:
            raise CheckpointError(f"{path}: model[{index}]: key {name!r} appears with and without the 'module.' prefix")
        state[name] = value
    if not state:
        raise CheckpointError(f"{path}: model[{index}]: the state dict is empty")
    return state


def read_official_checkpoint(path: str | Path) -> OfficialCheckpoint:
    """Read an official VSE∞ / VSE++ checkpoint safely (no code from the file runs).

    The file is loaded with ``torch.load(weights_only=True)`` with ``argparse.Namespace`` (the pickled
    ``opt``) as the only allowed class.

    Args:
        path: the ``.pth`` / ``.pth.tar`` file.

    Returns:
        The checkpoint's parts.

    Raises:
        CheckpointError: if the file is missing, not a torch file, pickles other objects, is a vsekit
            checkpoint already, or lacks the ``model`` list of two state dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":
        raise CheckpointError(f"{path}: not a torch checkpoint (neither a torch.save zip archive nor a legacy torch pickle)")
    if not hasattr(torch.serialization, "safe_globals"):
        raise CheckpointError(f"converting official checkpoints needs torch >= 2.5 (this is torch {torch.__version__})")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"{path}: refusing to unpickle {found.group(1)} (an official checkpoint holds tensors, numbers and "
                f"an argparse.Namespace only)"
            ) from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001  (torch.load fails on arbitrary bytes with many exception types)
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' entry, got {type(ckpt).__name__}")
    if ckpt.get("format") == "vsekit-checkpoint":
        raise CheckpointError(f"{path}: already a vsekit checkpoint; use it directly (vsekit.load / vsekit eval)")
    model = ckpt.get("model")
    if not isinstance(model, (list, tuple)) or len(model) != 2:
        got = "no 'model' entry" if model is None else f"{type(model).__name__}"
        if isinstance(model, (list, tuple)):
            got += f" of length {len(model)}"
        raise CheckpointError(
            f"{path}: expected the official layout with 'model': [image_state_dict, text_state_dict], got {got}"
        )
    opt = ckpt.get("opt")
    if isinstance(opt, argparse.Namespace):
        opt = vars(opt)
    elif opt is None:
        opt = {}
    elif not isinstance(opt, dict):
        raise CheckpointError(f"{path}: opt: expected the training options (argparse.Namespace), got {type(opt).__name__}")

    def number(key: str, kind: type) -> Any:
        value = ckpt.get(key)
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return OfficialCheckpoint(
        path=path,
        image_state=_encoder_state(model[0], 0, path),
        text_state=_encoder_state(model[1], 1, path),
        opt=dict(opt),
        epoch=number("epoch", int),
        best_rsum=number("best_rsum", float),
        iterations=number("Eiters", int),
    )


def detect_kind(image_state: dict[str, Tensor], text_state: dict[str, Tensor], source: str = "checkpoint") -> str:
    """The official layout of a pair of encoder state dicts: one of :data:`KINDS`.

    ``bert.*`` text keys mean VSE∞-BERT, ``rnn.weight_ih_l0_reverse`` VSE∞-BiGRU, a unidirectional ``rnn``
    VSE++.

    Raises:
        CheckpointError: for unsupported image encoders (VSE∞ grid backbones, VSE++ CNNs) or an unknown layout.
    """
    image_keys = sorted(image_state)
    if any(k.startswith(("backbone.", "image_encoder.")) for k in image_keys):
        raise CheckpointError(
            f"{source}: model[0] is a VSE∞ grid image encoder (a CNN backbone, precomp_enc_type='backbone'); "
            f"only precomputed-feature ('basic') image encoders can be converted"
        )
    if any(k.startswith("cnn.") for k in image_keys):
        raise CheckpointError(
            f"{source}: model[0] is a VSE++ full-image encoder (a CNN under 'cnn.'); only precomputed-feature "
            f"(*_precomp) VSE++ checkpoints can be converted"
        )
    if any(k.startswith("bert.") for k in text_state):
        return "vse_infty_bert"
    if "rnn.weight_ih_l0_reverse" in text_state:
        return "vse_infty_bigru"
    if "rnn.weight_ih_l0" in text_state:
        return "vsepp"
    raise CheckpointError(
        f"{source}: unknown layout: model[1] has neither 'bert.*' nor 'rnn.weight_ih_l0' keys "
        f"(keys: {_few(sorted(text_state))})"
    )


# ----------------------------------------------------------------------------------------------
# vocabularies


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
        raise CheckpointError(f"{path}: not a readable vocabulary pickle ({_first_line(e)})") from None
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
    from .text import Vocabulary

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: vocabulary file not found")
    data = path.read_bytes()
    if data.lstrip()[:1] == b"{":
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a valid vocabulary JSON ({_first_line(e)})") from None
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


def _opt(ckpt: OfficialCheckpoint, name: str, default: Any) -> Any:
    """``opt.<name>`` checked against the type of ``default`` (ints accepted for floats)."""
    value = ckpt.opt.get(name)
    if value is None:
        return default
    kind = type(default)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise CheckpointError(f"{ckpt.path}: opt.{name}: expected {kind.__name__}, got {value!r}")
    return kind(value)


def _tensor(state: dict[str, Tensor], key: str, index: int, ndim: int, source: Path) -> Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: model[{index}] lacks the key {key!r} (keys: {_few(sorted(state))})")
    value = state[key]
    if value.dim() != ndim:
        raise CheckpointError(f"{source}: model[{index}][{key!r}]: expected {ndim} dimensions, got shape {tuple(value.shape)}")
    return value


def _rnn_layers(state: dict[str, Tensor]) -> int:
    layers = 0
    while f"rnn.weight_ih_l{layers}" in state:
        layers += 1
    return layers


def _build_config(ckpt: OfficialCheckpoint, kind: str, name: str) -> TrainConfig:
    """The TrainConfig of the converted model: sizes from the weights, training options from ``opt``."""
    from .presets import get_preset

    src = ckpt.path
    fc = _tensor(ckpt.image_state, "fc.weight", 0, 2, src)
    embed_size, img_dim = int(fc.shape[0]), int(fc.shape[1])
    if kind == "vsepp":
        measure = _opt(ckpt, "measure", "cosine")
        if measure not in ("cosine", "order"):
            raise CheckpointError(f"{src}: opt.measure: expected 'cosine' or 'order', got {measure!r}")
        hardest = _opt(ckpt, "max_violation", False)
        base = {("cosine", True): "vsepp", ("cosine", False): "vse0", ("order", True): "vsepp_order", ("order", False): "vse0_order"}
        cfg = get_preset(base[measure, hardest])
        cfg.model.similarity = measure
        cfg.model.use_abs = _opt(ckpt, "use_abs", False)
        cfg.model.image.normalize = not _opt(ckpt, "no_imgnorm", False)
        cfg.model.image.mlp = False
        cfg.loss.negatives = "hardest" if hardest else "sum"
        cfg.loss.warmup_epochs = 0
    else:
        cfg = get_preset(_PRESETS[kind])
        cfg.model.image.mlp = any(k.startswith("mlp.") for k in ckpt.image_state)
        cfg.model.image.normalize = not _opt(ckpt, "no_imgnorm", False)
        cfg.model.text.normalize = not _opt(ckpt, "no_txtnorm", False)
        # The official loop starts with opt.max_violation and switches to hardest negatives for good at
        # epoch vse_mean_warmup_epochs: a warm-up of sums only when the flag was off.
        warmup = _opt(ckpt, "vse_mean_warmup_epochs", 0)
        cfg.loss.negatives = "hardest"
        cfg.loss.warmup_epochs = 0 if _opt(ckpt, "max_violation", False) else max(warmup, 0)
        optim = _opt(ckpt, "optim", "adam")
        if optim not in ("adam", "sgd"):
            raise CheckpointError(f"{src}: opt.optim: expected 'adam' or 'sgd', got {optim!r}")
        cfg.optim.optimizer = "adamw" if optim == "adam" else "sgd"  # VSE∞'s 'adam' is AdamW
        data_name = _opt(ckpt, "data_name", "")
        if data_name.startswith("coco"):
            cfg.data.test_split, cfg.eval_protocol = "testall", "coco1k"
        elif data_name.startswith("f30k"):
            cfg.data.test_split, cfg.eval_protocol = "test", "f30k"
    cfg.name = name
    cfg.model.embed_size = embed_size
    cfg.model.image.img_dim = img_dim
    if kind != "vse_infty_bert":
        words = _tensor(ckpt.text_state, "embed.weight", 1, 2, src)
        cfg.model.text.word_dim = int(words.shape[1])
        cfg.model.text.num_layers = _rnn_layers(ckpt.text_state)
    cfg.loss.margin = _opt(ckpt, "margin", cfg.loss.margin)
    cfg.optim.lr = _opt(ckpt, "learning_rate", cfg.optim.lr)
    cfg.optim.lr_decay_epochs = [_opt(ckpt, "lr_update", cfg.optim.lr_decay_epochs[0])]
    cfg.optim.grad_clip = _opt(ckpt, "grad_clip", cfg.optim.grad_clip)
    cfg.epochs = _opt(ckpt, "num_epochs", cfg.epochs)
    cfg.batch_size = _opt(ckpt, "batch_size", cfg.batch_size)
    return cfg


# ----------------------------------------------------------------------------------------------
# weights


def _official_name(key: str) -> str:
    """``image_encoder.fc.weight`` -> ``model[0]['fc.weight']``."""
    for prefix, index in (("image_encoder.", 0), ("text_encoder.", 1)):
        if key.startswith(prefix):
            return f"model[{index}][{key[len(prefix):]!r}]"
    return repr(key)


def _load_strictly(model: Any, state: dict[str, Tensor], ckpt: OfficialCheckpoint, kind: str, sizes: str) -> None:
    """Load ``state`` into ``model``: every key present, none extra, every shape equal, or a CheckpointError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few([_official_name(k) for k in missing], quote=False)}")
        if unexpected:
            parts.append(f"unexpected {_few([_official_name(k) for k in unexpected], quote=False)}")
        raise CheckpointError(f"{ckpt.path}: weights do not fit the {_DESCRIPTIONS[kind]} layout: {'; '.join(parts)}")
    for key, value in state.items():
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"{ckpt.path}: {_official_name(key)} has shape {tuple(value.shape)}, expected {want} ({sizes})"
            )
    model.load_state_dict(state, strict=True)


def _bert_mismatch(model: Any, state: dict[str, Tensor]) -> str | None:
    """Why the ``bert.*`` weights do not fit the BERT built from the folder's config (None if they do)."""
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("text_encoder.bert.")}
    given = {k: v for k, v in state.items() if k.startswith("text_encoder.bert.")}
    missing = [k[len("text_encoder.") :] for k in expected if k not in given]
    unexpected = [k[len("text_encoder.") :] for k in given if k not in expected]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {_few(missing, 3)}")
        if unexpected:
            detail.append(f"unexpected {_few(unexpected, 3)}")
        return "; ".join(detail)
    for key, value in given.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            return f"{key[len('text_encoder.'):]!r} is {tuple(value.shape)} in the checkpoint, {tuple(expected[key].shape)} in the config"
    return None


def _map_state(ckpt: OfficialCheckpoint, kind: str, model: Any) -> dict[str, Tensor]:
    """Official keys -> vsekit keys (``model[0]`` -> ``image_encoder.``, ``model[1]`` -> ``text_encoder.``)."""
    state = {f"image_encoder.{k}": v for k, v in ckpt.image_state.items()}
    state.update({f"text_encoder.{k}": v for k, v in ckpt.text_state.items()})
    if kind == "vse_infty_bert":
        own = model.state_dict()
        for name in _BERT_OPTIONAL_BUFFERS:
            key = f"text_encoder.{name}"
            if key in state and key not in own:
                del state[key]  # a persistent buffer in older transformers versions; rebuilt from the config
            elif key in own and key not in state:
                state[key] = own[key]
    return state


# ----------------------------------------------------------------------------------------------
# conversion


def convert_official(
    checkpoint: str | Path,
    output: str | Path,
    *,
    vocab: str | Path | None = None,
    bert_path: str | Path | None = None,
    kind: str = "auto",
) -> Path:
    """Convert an official VSE∞ (BiGRU or BERT branch, region features) or VSE++ (precomp) checkpoint.

    Args:
        checkpoint: the official ``.pth`` / ``.pth.tar`` file.
        output: where to write the vsekit checkpoint.
        vocab: the vocabulary the model was trained with (VSE∞-BiGRU: SCAN JSON; VSE++: the pickled
            ``Vocabulary`` or a SCAN JSON). Required for those kinds, refused for BERT.
        bert_path: the local Hugging Face BERT folder the model was trained from (its ``config.json`` and
            tokenizer; e.g. a saved ``bert-base-uncased``). Required for VSE∞-BERT, refused otherwise.
        kind: ``"auto"`` (detect from the weights) or one of :data:`KINDS` to insist on a layout.

    Returns:
        The path of the written checkpoint.

    Raises:
        CheckpointError: one line naming the file, key or option for every unreadable, unsupported or
            mismatched input (see :func:`read_official_checkpoint`, :func:`read_official_vocab`); nothing
            is written then.
    """
    from .checkpoint import save_checkpoint
    from .models import create_model

    if kind != "auto" and kind not in KINDS:
        raise CheckpointError(f"kind: expected 'auto' or one of {', '.join(KINDS)}, got {kind!r}")
    output = Path(output)
    source = Path(checkpoint)
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise CheckpointError(f"{output}: the output would overwrite the official checkpoint; choose another path")
    ckpt = read_official_checkpoint(source)
    found = detect_kind(ckpt.image_state, ckpt.text_state, str(source))
    if kind != "auto" and kind != found:
        raise CheckpointError(f"{source}: expected a {_DESCRIPTIONS[kind]} checkpoint, but the weights are {_DESCRIPTIONS[found]}")
    kind = found
    cfg = _build_config(ckpt, kind, output.name.split(".")[0] or "converted")
    sizes = f"embed_size={cfg.model.embed_size}, img_dim={cfg.model.image.img_dim}"

    if kind == "vse_infty_bert":
        if vocab is not None:
            raise CheckpointError(f"{source}: a BERT checkpoint uses the BERT folder's tokenizer; drop the vocabulary file")
        if bert_path is None:
            raise CheckpointError(f"{source}: a VSE∞ BERT checkpoint needs the BERT folder it was trained from (bert_path= / --bert PATH)")
        folder = Path(bert_path).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: BERT folder not found (expected a local Hugging Face model folder)")
        tokenizer = _bert_tokenizer(folder, cfg)
        cfg.model.text.transformer_path = str(folder.resolve())
    else:
        if bert_path is not None:
            raise CheckpointError(f"{source}: a BERT folder (--bert) applies to VSE∞ BERT checkpoints only; this one is {_DESCRIPTIONS[kind]}")
        if vocab is None:
            raise CheckpointError(f"{source}: a {_DESCRIPTIONS[kind]} checkpoint needs the vocabulary it was trained with (vocab= / --vocab FILE)")
        tokenizer, words_in_file = read_official_vocab(vocab)
        rows = int(ckpt.text_state["embed.weight"].shape[0])
        # VSE∞ appends <mask> before building the embedding table; VSE++ has no <mask>.
        want = len(tokenizer) if kind == "vse_infty_bigru" else words_in_file
        if rows != want:
            extra = " (its words + <mask>)" if kind == "vse_infty_bigru" and want != words_in_file else ""
            raise CheckpointError(
                f"{vocab}: the vocabulary has {want} ids{extra} but model[1]['embed.weight'] has {rows} rows; "
                f"use the vocabulary the model was trained with"
            )
        sizes += f", word_dim={cfg.model.text.word_dim}, vocabulary={len(tokenizer)}"

    try:
        validate(cfg, require_data=False)
        model = create_model(cfg.model, tokenizer)
    except (ConfigError, DataError) as e:
        raise CheckpointError(f"{source}: cannot build the converted model ({e})") from None
    state = _map_state(ckpt, kind, model)
    if kind == "vsepp" and len(tokenizer) == words_in_file + 1:
        words = state["text_encoder.embed.weight"]
        state["text_encoder.embed.weight"] = torch.cat([words, words.new_zeros(1, words.shape[1])])  # <mask>
    if kind == "vse_infty_bert":
        why = _bert_mismatch(model, state)
        if why is not None:
            raise CheckpointError(f"{folder}: the BERT config does not match the checkpoint's bert.* weights: {why}")
    _load_strictly(model, state, ckpt, kind, sizes)
    model.eval()
    options = {k: v for k, v in ckpt.opt.items() if isinstance(v, (str, int, float, bool, type(None)))}
    info = {"path": str(source), "kind": kind, "opt": options, "epoch": ckpt.epoch, "iterations": ckpt.iterations}
    return save_checkpoint(
        output, model, cfg,
        epoch=ckpt.epoch if ckpt.epoch is not None else 0,
        step=ckpt.iterations if ckpt.iterations is not None else 0,
        best_rsum=ckpt.best_rsum if ckpt.best_rsum is not None else float("nan"),
        converted_from=info,
    )  # fmt: skip


def _bert_tokenizer(folder: Path, cfg: TrainConfig) -> Any:
    """The tokenizer of the BERT folder, set up to build the network from its config (the weights come from
    the checkpoint). The longest caption is the preset's cap, or the model's positions if fewer."""
    from .text.hf import HFTokenizer

    config_file = folder / "config.json"
    try:
        model_config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: not a Hugging Face model folder (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_file}: not a readable model config ({_first_line(e)})") from None
    positions = model_config.get("max_position_embeddings") if isinstance(model_config, dict) else None
    if isinstance(positions, int) and positions > 0:
        cfg.model.text.max_length = min(cfg.model.text.max_length, positions)
    try:
        tokenizer = HFTokenizer.from_pretrained(folder, max_length=cfg.model.text.max_length)
    except ConfigError as e:
        raise CheckpointError(str(e).replace("model.text.transformer_path: ", "")) from None
    tokenizer.pretrained_path = None  # build the network from the config; the checkpoint fills every weight
    return tokenizer
