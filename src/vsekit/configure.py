"""Resolving and checking a training config: a preset, then a file, then ``key=value`` overrides, validated.

:mod:`vsekit.config` is the schema (typed dataclasses, dict and YAML conversion, overrides); this module sits
above the registries (encoders, poolings, views, presets) because checking a config means asking them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from .config import NEGATIVES, TrainConfig, apply_overrides, from_dict, merge_dict, read_config_file, to_dict
from .data.views import check_views
from .encoders import check_encoder_config
from .errors import ConfigError
from .presets import get_preset


def load_config(
    path: str | Path | None = None,
    preset: str | None = None,
    overrides: list[str] | None = None,
    require_data: bool = True,
) -> TrainConfig:
    """Resolve a config: a preset (or the file's ``preset:`` key), then the file, then overrides.

    With ``require_data=False`` a config may leave ``data.path`` unset (to print or edit a preset).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_config_file(path)
        preset = data.pop("preset", None) or preset
        if preset is not None and not isinstance(preset, str):
            raise ConfigError(f"{path}: preset: expected a preset name")
    base = to_dict(get_preset(preset)) if preset else to_dict(TrainConfig())
    try:
        cfg = from_dict(TrainConfig, merge_dict(base, data))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    cfg = apply_overrides(cfg, overrides)
    validate(cfg, require_data=require_data)
    return cfg


_CHOICES = {
    "model.similarity": ("cosine", "order"),
    "model.image.size_augment_mode": ("region", "grid"),
    "optim.optimizer": ("adamw", "adam", "sgd"),
    "loss.negatives": NEGATIVES,
    "data.kind": ("synthetic", "precomp", "karpathy", "frames", "synthetic_video"),
    "precision": ("fp32", "bf16", "fp16"),
}
_POSITIVE = (
    "model.embed_size", "model.image.img_dim", "model.image.image_size", "model.text.word_dim", "model.text.num_layers",
    "model.text.max_length", "epochs", "batch_size", "eval_batch_size", "data.captions_per_image", "optim.lr",
    "loss.temperature",
)
_PROBABILITIES = ("model.image.size_augment", "model.text.augment", "model.image.dropout", "model.text.dropout", "optim.ema_decay")
_NON_NEGATIVE = (
    "loss.margin", "loss.ranking_weight", "loss.instance_image_weight", "loss.instance_text_weight", "workers",
    "optim.weight_decay", "optim.grad_clip", "optim.lr_decay", "optim.momentum",
)


def validate(cfg: TrainConfig, require_data: bool = True) -> None:
    """Check values that the type system cannot; raise :class:`ConfigError` naming the field.

    With ``require_data=False`` the fields that point at data or model folders may be unset (to print or
    edit a preset).
    """
    check_encoder_config("image", cfg.model.image, require_data)
    check_encoder_config("text", cfg.model.text, require_data)
    _check_finite(cfg)
    _check_values(cfg)
    _check_optim(cfg)
    _check_loss(cfg)
    _check_data(cfg, require_data)
    _check_graphs(cfg)


def validate_model(cfg: TrainConfig) -> None:
    """The checks of :func:`validate` that a stored model depends on (encoder options, value ranges, finite numbers),
    without those of the data and training settings: what loading a checkpoint runs, since a damaged or hand-edited
    checkpoint can hold values that no training run writes, while its data fields may name another machine's
    folders."""
    check_encoder_config("image", cfg.model.image, False)
    check_encoder_config("text", cfg.model.text, False)
    _check_finite(cfg)
    _check_values(cfg)


def _field(cfg: TrainConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _check_finite(cfg: Any, where: str = "") -> None:
    """Every float of the config (nested sections and ``optim.lr_mults`` included) must be finite."""
    items = dataclasses.asdict(cfg).items() if where == "" else cfg.items()
    for name, value in items:
        key = f"{where}{name}"
        if isinstance(value, dict) and key != "data.synthetic":
            _check_finite(value, f"{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value}")


def _check_values(cfg: TrainConfig) -> None:
    for key, allowed in _CHOICES.items():
        if _field(cfg, key) not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {_field(cfg, key)!r}")
    for key in _POSITIVE:
        if not _field(cfg, key) > 0:
            kind = "integer" if isinstance(_field(cfg, key), int) else "number"
            raise ConfigError(f"{key}: expected a positive {kind}, got {_field(cfg, key)}")
    for key in _PROBABILITIES:
        if not 0.0 <= _field(cfg, key) < 1.0:
            raise ConfigError(f"{key}: expected a number in [0, 1), got {_field(cfg, key)}")
    for key in _NON_NEGATIVE:
        if _field(cfg, key) < 0:
            raise ConfigError(f"{key}: expected a non-negative number, got {_field(cfg, key)}")
    if cfg.model.instance_classes < -1:
        raise ConfigError(f"model.instance_classes: expected -1, 0 or a positive count, got {cfg.model.instance_classes}")


def _check_optim(cfg: TrainConfig) -> None:
    for key, mult in cfg.optim.lr_mults.items():
        if not isinstance(mult, (int, float)) or isinstance(mult, bool) or not 0 <= mult < math.inf:
            raise ConfigError(f"optim.lr_mults.{key}: expected a non-negative number, got {mult!r}")
    for key, n in cfg.optim.freeze.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < -1:
            raise ConfigError(f"optim.freeze.{key}: expected a number of epochs (or -1 for always), got {n!r}")


def _check_loss(cfg: TrainConfig) -> None:
    loss = cfg.loss
    if loss.ranking_weight + loss.instance_image_weight + loss.instance_text_weight <= 0:
        raise ConfigError("loss: at least one of ranking_weight, instance_image_weight, instance_text_weight must be > 0")
    if (loss.instance_image_weight > 0 or loss.instance_text_weight > 0) and cfg.model.instance_classes == 0:
        raise ConfigError("model.instance_classes: the instance loss needs classes (-1: one per training image)")


def _check_data(cfg: TrainConfig, require_data: bool) -> None:
    data = cfg.data
    if require_data and data.kind in ("precomp", "karpathy", "frames") and not data.path:
        raise ConfigError(f"data.path: required for data.kind={data.kind!r}")
    for key, chosen in (("data.eval_views", data.eval_views), ("data.train_views", data.train_views)):
        if chosen:
            check_views(chosen, key)
            if data.kind != "karpathy" or (require_data and not data.features):
                raise ConfigError(f"{key}: only for data.kind='karpathy' with data.features (vsekit extract --views)")
    if require_data and data.kind == "karpathy" and not (data.features or data.images):
        raise ConfigError("data.features or data.images: required for data.kind='karpathy' (features folder or image folder)")


GRAPH_TEXT_KINDS = ("bigru", "gru")
"""Text encoders whose training forward keeps the padded caption width on CUDA (no length read back)."""
GRAPH_IMAGE_KINDS = ("precomp", "backbone", "cnn_global")
"""Image encoders whose training forward keeps the padded set width (or pixel size) on CUDA."""


def _check_graphs(cfg: TrainConfig) -> None:
    """``cuda_graphs`` and its buckets: what a captured step cannot do is an error here, not a failed capture."""
    for key in ("graph_caption_buckets", "graph_set_buckets"):
        buckets = getattr(cfg, key)
        if any(b < 1 for b in buckets) or any(b >= c for b, c in zip(buckets, buckets[1:])):
            raise ConfigError(f"{key}: expected increasing positive widths, got {buckets}")
    if not cfg.cuda_graphs:
        return
    if not cfg.graph_caption_buckets:
        raise ConfigError("graph_caption_buckets: cuda_graphs needs at least one caption width")
    reason = _graph_conflict(cfg)
    if reason:
        raise ConfigError(f"cuda_graphs: {reason}; set cuda_graphs=false")


def _graph_conflict(cfg: TrainConfig) -> str | None:
    """Why ``cfg`` cannot train with ``cuda_graphs`` (None: it can)."""
    if cfg.device in ("cpu", "mps"):
        return f"needs a CUDA device, got device={cfg.device}"
    if cfg.compile:
        return "cannot be combined with compile=true (torch.compile has its own CUDA graphs: mode='reduce-overhead')"
    if cfg.precision == "fp16":
        return "fp16's gradient scaler reads the gradients' finiteness back on the host every step; use precision=bf16"
    text, image = cfg.model.text, cfg.model.image
    if text.kind not in GRAPH_TEXT_KINDS:
        return f"model.text.kind={text.kind!r} is not supported (supported: {', '.join(GRAPH_TEXT_KINDS)})"
    if image.kind not in GRAPH_IMAGE_KINDS:
        return f"model.image.kind={image.kind!r} is not supported (supported: {', '.join(GRAPH_IMAGE_KINDS)})"
    if image.kind == "backbone" and image.size_augment > 0:
        return (
            "the backbone's size augmentation cuts each batch to its longest kept set, a size read from the device; "
            "set model.image.size_augment=0"
        )
    if cfg.loss.same_text_positives:
        return "loss.same_text_positives looks the caption ids up on the host every step"
    return None
