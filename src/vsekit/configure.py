"""Resolving and checking a training config: a preset, then a file, then ``key=value`` overrides, validated.

:mod:`vsekit.config` is the schema (typed dataclasses, dict and YAML conversion, overrides); this module sits
above the registries (encoders, poolings, views, presets) because checking a config means asking them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import NEGATIVES, TrainConfig, apply_overrides, from_dict, merge_dict, read_config_file, to_dict
from .data.views import check_views
from .encoders import list_image_encoders, list_text_encoders
from .errors import ConfigError
from .pooling import create_pooling
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


def validate(cfg: TrainConfig, require_data: bool = True) -> None:
    """Check values that the type system cannot; raise :class:`ConfigError` naming the field."""
    if cfg.model.image.kind not in list_image_encoders():
        raise ConfigError(f"model.image.kind: expected one of {', '.join(list_image_encoders())}, got {cfg.model.image.kind!r}")
    if cfg.model.text.kind not in list_text_encoders():
        raise ConfigError(f"model.text.kind: expected one of {', '.join(list_text_encoders())}, got {cfg.model.text.kind!r}")
    flat = {
        "model.similarity": cfg.model.similarity,
        "model.image.size_augment_mode": cfg.model.image.size_augment_mode,
        "optim.optimizer": cfg.optim.optimizer,
        "loss.negatives": cfg.loss.negatives,
        "data.kind": cfg.data.kind,
        "precision": cfg.precision,
    }
    for key, value in flat.items():
        if value not in _CHOICES[key]:
            raise ConfigError(f"{key}: expected one of {', '.join(_CHOICES[key])}, got {value!r}")
    positive = {
        "model.embed_size": cfg.model.embed_size,
        "model.image.img_dim": cfg.model.image.img_dim,
        "model.text.word_dim": cfg.model.text.word_dim,
        "model.text.num_layers": cfg.model.text.num_layers,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "eval_batch_size": cfg.eval_batch_size,
        "data.captions_per_image": cfg.data.captions_per_image,
        "model.image.image_size": cfg.model.image.image_size,
        "model.text.max_length": cfg.model.text.max_length,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: expected a positive integer, got {value}")
    for key, p in (("model.image.size_augment", cfg.model.image.size_augment), ("model.text.augment", cfg.model.text.augment)):
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"{key}: expected a probability in [0, 1), got {p}")
    for key, p in (("model.image.dropout", cfg.model.image.dropout), ("model.text.dropout", cfg.model.text.dropout)):
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"{key}: expected a probability in [0, 1), got {p}")
    for key, mult in cfg.optim.lr_mults.items():
        if not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult < 0:
            raise ConfigError(f"optim.lr_mults.{key}: expected a non-negative number, got {mult!r}")
    for key, n in cfg.optim.freeze.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < -1:
            raise ConfigError(f"optim.freeze.{key}: expected a number of epochs (or -1 for always), got {n!r}")
    weights = {
        "loss.ranking_weight": cfg.loss.ranking_weight,
        "loss.instance_image_weight": cfg.loss.instance_image_weight,
        "loss.instance_text_weight": cfg.loss.instance_text_weight,
    }
    for key, w in weights.items():
        if w < 0:
            raise ConfigError(f"{key}: expected a non-negative weight, got {w}")
    if sum(weights.values()) <= 0:
        raise ConfigError("loss: at least one of ranking_weight, instance_image_weight, instance_text_weight must be > 0")
    if (cfg.loss.instance_image_weight > 0 or cfg.loss.instance_text_weight > 0) and cfg.model.instance_classes == 0:
        raise ConfigError("model.instance_classes: the instance loss needs classes (-1: one per training image)")
    if cfg.model.instance_classes < -1:
        raise ConfigError(f"model.instance_classes: expected -1, 0 or a positive count, got {cfg.model.instance_classes}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr: expected a positive number, got {cfg.optim.lr}")
    if not 0 <= cfg.optim.ema_decay < 1:
        raise ConfigError(f"optim.ema_decay: expected a number in [0, 1) (0: no averaging), got {cfg.optim.ema_decay}")
    if cfg.loss.margin < 0:
        raise ConfigError(f"loss.margin: expected a non-negative number, got {cfg.loss.margin}")
    if not cfg.loss.temperature > 0:
        raise ConfigError(f"loss.temperature: expected a positive number, got {cfg.loss.temperature}")
    if cfg.workers < 0:
        raise ConfigError(f"workers: expected >= 0, got {cfg.workers}")
    if require_data and cfg.data.kind in ("precomp", "karpathy", "frames") and not cfg.data.path:
        raise ConfigError(f"data.path: required for data.kind={cfg.data.kind!r}")
    for option in ("frozen", "mlp"):  # the transformer text encoder's own switches
        if getattr(cfg.model.text, option) and cfg.model.text.kind != "transformer":
            raise ConfigError(f"model.text.{option}: only kind 'transformer' has it, got kind {cfg.model.text.kind!r}")
    if require_data and cfg.model.text.kind == "transformer" and not cfg.model.text.transformer_path:
        raise ConfigError("model.text.transformer_path: required for kind 'transformer' (a local Hugging Face model folder)")
    for key, chosen in (("data.eval_views", cfg.data.eval_views), ("data.train_views", cfg.data.train_views)):
        if chosen:
            check_views(chosen, key)
            if cfg.data.kind != "karpathy" or (require_data and not cfg.data.features):
                raise ConfigError(f"{key}: only for data.kind='karpathy' with data.features (vsekit extract --views)")
    if require_data and cfg.data.kind == "karpathy" and not (cfg.data.features or cfg.data.images):
        raise ConfigError("data.features or data.images: required for data.kind='karpathy' (features folder or image folder)")
    poolings = [("model.image.pooling", cfg.model.image.pooling)]
    if cfg.model.text.kind == "textcnn":
        pass  # max pooling over positions is part of the architecture
    elif cfg.model.text.kind == "gru":
        if cfg.model.text.pooling != "last":
            raise ConfigError(f"model.text.pooling: kind 'gru' takes the last hidden state: expected 'last', got {cfg.model.text.pooling!r}")
    else:
        poolings.append(("model.text.pooling", cfg.model.text.pooling))
    for key, name in poolings:
        try:
            create_pooling(name)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
