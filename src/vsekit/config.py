"""Typed configuration.

Every run is described by one :class:`TrainConfig`, a tree of dataclasses. It is written into the run
folder as ``config.yaml`` and saved inside every checkpoint, so a checkpoint alone rebuilds its model.
Configs come from a preset (:mod:`vsekit.presets`), a YAML/JSON file, and ``key=value`` overrides:

>>> cfg = apply_overrides(TrainConfig(), ["optim.lr=1e-3", "model.image.pooling=max"])
>>> cfg.optim.lr, cfg.model.image.pooling
(0.001, 'max')
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, first_line


@dataclass
class ImageEncoderConfig:
    """Image branch: precomputed features or raw pixels -> embedding (kinds: ``vsekit.encoders``)."""

    kind: str = "precomp"  # 'precomp': a set of precomputed feature vectors per image; see list_image_encoders()
    img_dim: int = 2048  # dimension of each input feature vector (precomp); the backbone's width otherwise
    mlp: bool = True  # VSE∞ region encoder: fc + two-layer residual MLP with BatchNorm; False: fc only
    pooling: str = "gpo"  # 'gpo' | 'mean' | 'max' | 'kmax:K' (see vsekit.pooling)
    size_augment: float = 0.2  # training: drop rate of set elements (regions, grid cells, frames)
    size_augment_mode: str = "region"  # 'region': i.i.d. per element | 'grid': VSE∞ per-sample rate
    normalize: bool = True  # l2-normalise the embedding
    backbone: str = "efficientnet_lite0"  # raw-image kinds: the CNN (see vsekit.backbones)
    pretrained: bool = True  # raw-image kinds: start from the backbone's pretrained weights
    image_size: int = 224  # raw-image kinds: side of the square network input
    dropout: float = 0.0  # Dual-Path image branch: dropout before the instance classifier


@dataclass
class TextEncoderConfig:
    """Text branch: token ids -> embedding (kinds: ``vsekit.encoders``)."""

    kind: str = "bigru"  # 'bigru': BiGRU, directions averaged, then pooling | 'gru': GRU last state (VSE++) | see list_text_encoders()
    word_dim: int = 300  # word embedding size
    num_layers: int = 1  # GRU layers
    pooling: str = "gpo"  # pooling over the words (see vsekit.pooling); 'last' for kind='gru'
    augment: float = 0.2  # training: per-token probability of mask (50%) / random (10%) / delete (40%)
    word_vectors: str | None = None  # optional GloVe-style text file ("word v1 v2 ...") to initialise embeddings
    normalize: bool = True  # l2-normalise the embedding
    transformer_path: str | None = None  # kind 'transformer': a local Hugging Face model folder
    frozen: bool = False  # kind 'transformer': keep its pretrained weights (eval mode, no gradients); on CPU its outputs are cached per caption
    mlp: bool = False  # kind 'transformer': add the VSE∞ two-layer residual MLP (with BatchNorm) to the linear map of the token states
    max_length: int = 32  # token positions (Dual-Path text CNN; longest transformer input)
    dropout: float = 0.0  # Dual-Path text branch: dropout before the instance classifier


@dataclass
class ModelConfig:
    """A two-branch embedding model."""

    embed_size: int = 1024  # joint embedding dimension
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    similarity: str = "cosine"  # 'cosine' (dot product of l2-normalised embeddings) | 'order' (VSE++ order embeddings)
    use_abs: bool = False  # order embeddings: absolute value of both embeddings (positive orthant)
    instance_classes: int = 0  # Dual-Path instance loss: classes of the shared classifier (-1: training images)


NEGATIVES = ("hardest", "sum", "softmax")
"""``loss.negatives``: how a query's negatives combine: max of hinges (VSE++), sum of hinges (VSE0), or
softmax (InfoNCE). :mod:`vsekit.losses` implements them."""


@dataclass
class LossConfig:
    """The ranking loss: hinge triplet loss (VSE0 / VSE++) or the softmax (InfoNCE) loss, plus Dual-Path's
    instance losses."""

    margin: float = 0.2
    negatives: str = "hardest"  # 'hardest' (VSE++, max of hinges) | 'sum' (VSE0, sum of hinges) | 'softmax' (InfoNCE)
    temperature: float = 0.05  # negatives='softmax': the softmax temperature
    warmup_epochs: int = 0  # VSE∞ warm-up: use 'sum' for the first N epochs, then `negatives`
    same_image_positives: bool = False  # other captions of the same image in the batch are not negatives
    # captions that read the same as a pair's caption (RSICD repeats many) are not negatives of its image, and
    # the images they describe not negatives of its caption
    same_text_positives: bool = False
    ranking_weight: float = 1.0  # weight of the hinge ranking loss (0: instance loss only, Dual-Path stage 1)
    instance_image_weight: float = 0.0  # Dual-Path: weight of the image branch's instance (classification) loss
    instance_text_weight: float = 0.0  # Dual-Path: weight of the text branch's instance loss


@dataclass
class OptimConfig:
    """The optimizer, per-module learning rates and freezing, and step decay.

    ``lr_mults`` and ``freeze`` are keyed by module path prefixes of the model, e.g.
    ``image_encoder.backbone`` or ``text_encoder.bert`` (the longest matching prefix wins).
    """

    optimizer: str = "adamw"  # 'adamw' | 'adam' | 'sgd' (momentum, Nesterov)
    lr: float = 5e-4
    weight_decay: float = 1e-4
    image_lr_mult: float = 1.0  # learning-rate multiplier of the image encoder's parameter group
    text_lr_mult: float = 1.0  # learning-rate multiplier of the text encoder's parameter group
    lr_decay_epochs: list[int] = field(default_factory=lambda: [15])  # multiply the lr by lr_decay at these epochs
    lr_decay: float = 0.1
    grad_clip: float = 2.0  # global gradient-norm clip; 0 disables
    momentum: float = 0.9  # sgd only
    lr_mults: dict[str, float] = field(default_factory=dict)  # module prefix -> lr multiplier (overrides the two above)
    freeze: dict[str, int] = field(default_factory=dict)  # module prefix -> frozen for the first N epochs (-1: always)
    unfreeze_ramp: bool = False  # VSE∞ grid: scale the loss linearly from 0 to 1 over the first epoch after unfreezing
    ema_decay: float = 0.0  # > 0: validate and keep (best.pt) an exponential moving average of the weights, updated every step


@dataclass
class DataConfig:
    """Where the data comes from.

    ``kind``:
      * ``synthetic``: the built-in generated scenes (no files); ``synthetic`` holds overrides of
        :class:`vsekit.data.SyntheticConfig`.
      * ``precomp``: the SCAN / VSE∞ layout in ``path``: ``{split}_ims.npy`` + ``{split}_caps.txt``.
      * ``karpathy``: captions from a Karpathy-style JSON (``path``), features from
        ``{features}/{split}_ims.npy`` whose rows follow the JSON's image order for that split; or,
        with ``images`` set and ``features`` unset, the raw image files ``{images}/{filepath}/{filename}``
        (for raw-image models, ``vsekit.data.images.KarpathyImageDataset``).
      * ``synthetic`` with ``synthetic.render: true`` draws the built-in scenes as images.
      * ``frames``: video frame features in ``path``: ``{split}_frames.npy`` + ``{split}_offsets.npy`` +
        ``{split}_caps.txt`` (:class:`vsekit.data.FrameFeatureDataset`).
      * ``synthetic_video``: generated videos; ``synthetic`` holds overrides of
        :class:`vsekit.data.SyntheticVideoConfig`.
    """

    kind: str = "synthetic"
    path: str | None = None
    features: str | None = None  # karpathy only: folder of {split}_ims.npy
    images: str | None = None  # karpathy only: folder of the raw images (raw-image models)
    train_split: str = "train"
    val_split: str = "val"  # "dev" in the SCAN precomp layout
    test_split: str = "test"
    captions_per_image: int = 5
    val_max_images: int | None = 1000  # the official validation uses the first 1000 dev images
    vocab_min_count: int = 4  # words seen fewer times in the training captions map to <unk>
    synthetic: dict[str, Any] = field(default_factory=dict)
    # karpathy + features: test-time views (e.g. [rot90, rot180, rot270]) whose image embeddings are averaged
    # with the plain image's wherever a split is evaluated (validation, vsekit eval; never the training split);
    # files {features}/{split}_ims.{view}.npy from `vsekit extract --views`
    eval_views: list[str] = field(default_factory=list)
    # karpathy + features: views drawn at random with the plain image for every training sample (rotation
    # augmentation; files {features}/{train_split}_ims.{view}.npy from `vsekit extract --views`)
    train_views: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Everything a training run needs."""

    name: str = "vse"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 25
    batch_size: int = 128
    eval_batch_size: int = 256
    workers: int = 0  # DataLoader worker processes
    checkpoint_every: int = 0  # also write last.pt every N steps inside an epoch (0: at epoch ends only)
    seed: int = 0
    device: str = "auto"  # 'auto' (CUDA when present) | 'cpu' | 'cuda' | 'cuda:1' | 'mps'
    precision: str = "fp32"  # 'fp32' | 'bf16' | 'fp16' (autocast; fp16 adds a grad scaler)
    compile: bool = False  # run the training forward through torch.compile (dynamic shapes); helps on GPUs, not on CPUs
    # replay the training step as CUDA graphs, one per shape: captions padded to the next of graph_caption_buckets
    # (longer ones to a multiple of the last), feature sets to the next of graph_set_buckets (empty: as collated);
    # CUDA only, off by default (docs/guides/training.md)
    cuda_graphs: bool = False
    graph_caption_buckets: list[int] = field(default_factory=lambda: [16, 24, 32, 48, 64])
    graph_set_buckets: list[int] = field(default_factory=list)
    eval_protocol: str = "kcaptions"  # protocol of the final test evaluation (see vsekit.evaluation.PROTOCOLS)
    init_from: str | None = None  # start from this checkpoint's weights and tokenizer (e.g. Dual-Path stage 2)


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain nested dicts (JSON/YAML-able)."""
    return dataclasses.asdict(cfg)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``, converting where it is safe (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from nested dicts, strictly: unknown or mistyped fields are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def merge_dict(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "synthetic":
            out[k] = merge_dict(out[k], v)
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------------------------
# files and overrides


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (no validation yet)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({first_line(e)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (so ``1e-3``, ``true``, ``[1, 2]`` work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)
    return key.split("."), value


def _looks_like_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return any(c in s.lower() for c in ".e") and s.strip().lower() not in {"nan", "inf", "-inf"}


def apply_overrides(cfg: TrainConfig, overrides: list[str] | None) -> TrainConfig:
    """Return a copy of ``cfg`` with ``key=value`` overrides applied and validated."""
    data = to_dict(cfg)
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"override {item!r}: unknown field {'.'.join(path[: i + 1])!r}")
            node = node[part]
        free_form = path[:-1] == ["data", "synthetic"]  # SyntheticConfig fields, checked when the data is made
        if not isinstance(node, dict) or (path[-1] not in node and not free_form):
            raise ConfigError(f"override {item!r}: unknown field {'.'.join(path)!r}")
        node[path[-1]] = value
    return from_dict(TrainConfig, data)


def dump_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
