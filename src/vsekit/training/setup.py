"""What a run is built from: its datasets, the config resolved against them, and the model with its
tokenizer (from ``last.pt`` when resuming, from ``init_from``, or built from the training captions)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch

from ..checkpoint import read_checkpoint
from ..config import TrainConfig
from ..data import build_tokenizer, tokenizer_from_dict
from ..data.factory import build_dataset
from ..encoders import load_word_vectors
from ..errors import ConfigError
from ..models import VSEModel, create_model


def load_datasets(cfg: TrainConfig, datasets: dict[str, Any] | None) -> tuple[Any, Any]:
    """The training and validation sets: those of ``datasets`` (``{"train": ..., "val": ...}``) when given,
    otherwise those of ``cfg.data``."""
    if datasets is None:
        datasets = {
            "train": build_dataset(cfg.data, cfg.data.train_split),
            "val": build_dataset(cfg.data, cfg.data.val_split, max_images=cfg.data.val_max_images, evaluation=True),
        }
    return datasets["train"], datasets["val"]


def resolve_for_data(cfg: TrainConfig, train_set: Any) -> TrainConfig:
    """Fill in what depends on the training data: ``model.instance_classes = -1`` becomes the number of
    training images (one Dual-Path class per image). The resolved config is what checkpoints store."""
    if cfg.model.instance_classes == -1:
        cfg = copy.deepcopy(cfg)
        cfg.model.instance_classes = int(train_set.num_images)
    return cfg


def build_run_model(
    cfg: TrainConfig,
    resume_from: dict[str, Any] | None,
    run_dir: Path,
    train_set: Any,
    device: torch.device,
    report: Callable[[str], None],
) -> VSEModel:
    """The model of a run, on ``device``, initialised from the global RNG (seed it first).

    Its tokenizer is that of ``resume_from`` (the run's ``last.pt``, whose weights the caller loads), else that
    of ``cfg.init_from`` (whose weights are loaded here), else built from the training captions (with
    ``model.text.word_vectors`` loaded into the word embedding).

    Raises:
        ConfigError: the ``init_from`` weights do not fit the model.
    """
    word_vectors = None
    init = None
    if resume_from is not None:
        tokenizer = tokenizer_from_dict(resume_from["vocab"], source=str(run_dir / "last.pt"))
    elif cfg.init_from:
        init = read_checkpoint(cfg.init_from)
        tokenizer = tokenizer_from_dict(init["vocab"], source=init["path"])
    else:
        tokenizer = build_tokenizer(cfg.model.text, train_set.captions(), min_count=cfg.data.vocab_min_count)
        if cfg.model.text.word_vectors:
            word_vectors, found = load_word_vectors(cfg.model.text.word_vectors, tokenizer.idx2word, cfg.model.text.word_dim)
            report(f"word vectors: {found}/{len(tokenizer)} vocabulary words found in {cfg.model.text.word_vectors}")
    model = create_model(cfg.model, tokenizer, word_vectors=word_vectors).to(device)
    if init is not None:
        try:
            model.load_state_dict(init["model"], strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())[:300]
            raise ConfigError(f"init_from: {init['path']}: weights do not match this model ({detail})") from None
        report(f"initialised from {init['path']}")
    return model


def check_image_kinds(model: VSEModel, cfg: TrainConfig, train_set: Any, val_set: Any) -> None:
    """Refuse datasets whose images are not of the kind the model takes (features, raw images, ...)."""
    for name, ds in (("train", train_set), ("val", val_set)):
        kind = getattr(ds, "image_kind", "features")
        if kind != model.image_input.kind:
            raise ConfigError(
                f"data: the {name} split gives images as {kind}, but model.image.kind={cfg.model.image.kind!r} takes "
                f"{model.image_input.kind}"
            )
