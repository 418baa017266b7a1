"""From an official checkpoint to a vsekit model: its config (sizes from the weight shapes, options from
``opt``) and its state dict under vsekit's names, loaded strictly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..config import TrainConfig
from ..errors import CheckpointError
from .reading import DESCRIPTIONS, OfficialCheckpoint, name_list

PRESETS = {"vse_infty_bigru": "vse_infty_region_bigru", "vse_infty_bert": "vse_infty_region_transformer"}
# Deterministic buffers that some transformers versions save in the state dict and others do not.
BERT_OPTIONAL_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")


def _official_option(ckpt: OfficialCheckpoint, name: str, default: Any) -> Any:
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
        raise CheckpointError(f"{source}: model[{index}] lacks the key {key!r} (keys: {name_list(sorted(state))})")
    value = state[key]
    if value.dim() != ndim:
        raise CheckpointError(f"{source}: model[{index}][{key!r}]: expected {ndim} dimensions, got shape {tuple(value.shape)}")
    return value


def _rnn_layers(state: dict[str, Tensor]) -> int:
    layers = 0
    while f"rnn.weight_ih_l{layers}" in state:
        layers += 1
    return layers


def build_config(ckpt: OfficialCheckpoint, kind: str, name: str) -> TrainConfig:
    """The TrainConfig of the converted model: sizes from the weights, training options from ``opt``."""
    from ..presets import get_preset

    src = ckpt.path
    fc = _tensor(ckpt.image_state, "fc.weight", 0, 2, src)
    embed_size, img_dim = int(fc.shape[0]), int(fc.shape[1])
    if kind == "vsepp":
        measure = _official_option(ckpt, "measure", "cosine")
        if measure not in ("cosine", "order"):
            raise CheckpointError(f"{src}: opt.measure: expected 'cosine' or 'order', got {measure!r}")
        hardest = _official_option(ckpt, "max_violation", False)
        base = {("cosine", True): "vsepp", ("cosine", False): "vse0", ("order", True): "vsepp_order", ("order", False): "vse0_order"}
        cfg = get_preset(base[measure, hardest])
        cfg.model.similarity = measure
        cfg.model.use_abs = _official_option(ckpt, "use_abs", False)
        cfg.model.image.normalize = not _official_option(ckpt, "no_imgnorm", False)
        cfg.model.image.mlp = False
        cfg.loss.negatives = "hardest" if hardest else "sum"
        cfg.loss.warmup_epochs = 0
    else:
        cfg = get_preset(PRESETS[kind])
        cfg.model.image.mlp = any(k.startswith("mlp.") for k in ckpt.image_state)
        cfg.model.image.normalize = not _official_option(ckpt, "no_imgnorm", False)
        cfg.model.text.normalize = not _official_option(ckpt, "no_txtnorm", False)
        # The official loop starts with opt.max_violation and switches to hardest negatives for good at
        # epoch vse_mean_warmup_epochs: a warm-up of sums only when the flag was off.
        warmup = _official_option(ckpt, "vse_mean_warmup_epochs", 0)
        cfg.loss.negatives = "hardest"
        cfg.loss.warmup_epochs = 0 if _official_option(ckpt, "max_violation", False) else max(warmup, 0)
        optim = _official_option(ckpt, "optim", "adam")
        if optim not in ("adam", "sgd"):
            raise CheckpointError(f"{src}: opt.optim: expected 'adam' or 'sgd', got {optim!r}")
        cfg.optim.optimizer = "adamw" if optim == "adam" else "sgd"  # VSE∞'s 'adam' is AdamW
        data_name = _official_option(ckpt, "data_name", "")
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
    cfg.loss.margin = _official_option(ckpt, "margin", cfg.loss.margin)
    cfg.optim.lr = _official_option(ckpt, "learning_rate", cfg.optim.lr)
    cfg.optim.lr_decay_epochs = [_official_option(ckpt, "lr_update", cfg.optim.lr_decay_epochs[0])]
    cfg.optim.grad_clip = _official_option(ckpt, "grad_clip", cfg.optim.grad_clip)
    cfg.epochs = _official_option(ckpt, "num_epochs", cfg.epochs)
    cfg.batch_size = _official_option(ckpt, "batch_size", cfg.batch_size)
    return cfg


# ----------------------------------------------------------------------------------------------
# weights


def _official_name(key: str) -> str:
    """``image_encoder.fc.weight`` -> ``model[0]['fc.weight']``."""
    for prefix, index in (("image_encoder.", 0), ("text_encoder.", 1)):
        if key.startswith(prefix):
            return f"model[{index}][{key[len(prefix):]!r}]"
    return repr(key)


def load_strictly(model: Any, state: dict[str, Tensor], ckpt: OfficialCheckpoint, kind: str, sizes: str) -> None:
    """Load ``state`` into ``model``: every key present, none extra, every shape equal, or a CheckpointError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {name_list([_official_name(k) for k in missing], quote=False)}")
        if unexpected:
            parts.append(f"unexpected {name_list([_official_name(k) for k in unexpected], quote=False)}")
        raise CheckpointError(f"{ckpt.path}: weights do not fit the {DESCRIPTIONS[kind]} layout: {'; '.join(parts)}")
    for key, value in state.items():
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"{ckpt.path}: {_official_name(key)} has shape {tuple(value.shape)}, expected {want} ({sizes})"
            )
    model.load_state_dict(state, strict=True)


def bert_mismatch(model: Any, state: dict[str, Tensor]) -> str | None:
    """Why the ``bert.*`` weights do not fit the BERT built from the folder's config (None if they do)."""
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("text_encoder.bert.")}
    given = {k: v for k, v in state.items() if k.startswith("text_encoder.bert.")}
    missing = [k[len("text_encoder.") :] for k in expected if k not in given]
    unexpected = [k[len("text_encoder.") :] for k in given if k not in expected]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {name_list(missing, 3)}")
        if unexpected:
            detail.append(f"unexpected {name_list(unexpected, 3)}")
        return "; ".join(detail)
    for key, value in given.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            return f"{key[len('text_encoder.'):]!r} is {tuple(value.shape)} in the checkpoint, {tuple(expected[key].shape)} in the config"
    return None


def map_state(ckpt: OfficialCheckpoint, kind: str, model: Any) -> dict[str, Tensor]:
    """Official keys -> vsekit keys (``model[0]`` -> ``image_encoder.``, ``model[1]`` -> ``text_encoder.``)."""
    state = {f"image_encoder.{k}": v for k, v in ckpt.image_state.items()}
    state.update({f"text_encoder.{k}": v for k, v in ckpt.text_state.items()})
    if kind == "vse_infty_bert":
        own = model.state_dict()
        for name in BERT_OPTIONAL_BUFFERS:
            key = f"text_encoder.{name}"
            if key in state and key not in own:
                del state[key]  # a persistent buffer in older transformers versions; rebuilt from the config
            elif key in own and key not in state:
                state[key] = own[key]
    return state


# ----------------------------------------------------------------------------------------------
# conversion
