"""Named config presets: the papers' recipes and the built-in demo.

>>> from vsekit.presets import get_preset, list_presets
>>> "vse_infty_region_bigru" in list_presets()
True
>>> get_preset("vse_infty_region_bigru").loss.warmup_epochs
1

Each preset is a function returning a fresh :class:`vsekit.config.TrainConfig`; register new ones with
:func:`register_preset`. Paths are never part of a preset: set ``data.path`` in a config file or with
an override.
"""

from __future__ import annotations

from typing import Callable

from .config import DataConfig, ImageEncoderConfig, LossConfig, ModelConfig, OptimConfig, TextEncoderConfig, TrainConfig
from .errors import ConfigError

_PRESETS: dict[str, tuple[Callable[[], TrainConfig], str]] = {}


def register_preset(name: str, description: str) -> Callable[[Callable[[], TrainConfig]], Callable[[], TrainConfig]]:
    """Decorator registering a preset function under ``name``."""

    def wrap(fn: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
        if name in _PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        _PRESETS[name] = (fn, description)
        return fn

    return wrap


def get_preset(name: str) -> TrainConfig:
    """A fresh config of preset ``name``."""
    if name not in _PRESETS:
        raise ConfigError(f"preset {name!r}: unknown (known: {', '.join(sorted(_PRESETS))})")
    return _PRESETS[name][0]()


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    return {name: desc for name, (_, desc) in sorted(_PRESETS.items())}


@register_preset(
    "vse_infty_region_bigru",
    "VSE∞ (CVPR 2021): BUTD region features (36×2048) + BiGRU, GPO on both sides, size augmentation, "
    "1 epoch of sum-of-hinges then hardest negatives, AdamW 5e-4, 25 epochs, lr ×0.1 at 15",
)
def vse_infty_region_bigru() -> TrainConfig:
    # Official bigru branch: train_region.sh. The paper gives weight decay 1e-4 (the bigru region code
    # passes none, so PyTorch's AdamW default of 1e-2 applies there); we follow the paper.
    return TrainConfig(
        name="vse_infty_region_bigru",
        model=ModelConfig(
            embed_size=1024,
            image=ImageEncoderConfig(img_dim=2048, mlp=True, pooling="gpo", size_augment=0.2),
            text=TextEncoderConfig(kind="bigru", word_dim=300, pooling="gpo", augment=0.2),
        ),
        loss=LossConfig(margin=0.2, negatives="hardest", warmup_epochs=1),
        optim=OptimConfig(lr=5e-4, weight_decay=1e-4, lr_decay_epochs=[15], lr_decay=0.1, grad_clip=2.0),
        data=DataConfig(kind="precomp", val_split="dev", test_split="testall", val_max_images=1000),
        epochs=25,
        batch_size=128,
        eval_protocol="coco1k",
    )


def _vsepp(name: str, negatives: str) -> TrainConfig:
    # fartashf/vsepp: precomputed global CNN vectors (4096-d VGG19 by default) -> fc -> l2norm;
    # unidirectional GRU, last hidden state; Adam 2e-4 (no weight decay), 30 epochs, lr ×0.1 at 15,
    # grad clip 2, margin 0.2. The README's VSE0 row also drops the image l2-normalisation.
    return TrainConfig(
        name=name,
        model=ModelConfig(
            embed_size=1024,
            image=ImageEncoderConfig(img_dim=4096, mlp=False, pooling="mean", size_augment=0.0, normalize=negatives == "hardest"),
            text=TextEncoderConfig(kind="gru", word_dim=300, pooling="last", augment=0.0),
        ),
        loss=LossConfig(margin=0.2, negatives=negatives, warmup_epochs=0),
        optim=OptimConfig(lr=2e-4, weight_decay=0.0, lr_decay_epochs=[15], lr_decay=0.1, grad_clip=2.0),
        data=DataConfig(kind="precomp", val_split="dev", test_split="test", val_max_images=1000),
        epochs=30,
        batch_size=128,
        eval_protocol="kcaptions",
    )


@register_preset(
    "vsepp",
    "VSE++ (BMVC 2018): precomputed global CNN vectors + GRU (last state), hardest negatives, Adam 2e-4, 30 epochs",
)
def vsepp() -> TrainConfig:
    return _vsepp("vsepp", "hardest")


@register_preset("vse0", "VSE0 baseline of VSE++: as 'vsepp' but summing the hinges over all negatives")
def vse0() -> TrainConfig:
    return _vsepp("vse0", "sum")


def _demo(pooling: str) -> TrainConfig:
    # Small enough to train three of these side by side in about 100 s on a 2-core CPU. The loss sums the
    # hinges over all negatives (VSE0): with a few hundred steps on the small built-in data, switching
    # to hardest negatives after a one-epoch warm-up collapses to the constant 2*B*margin loss (the
    # failure mode reported in vsepp#27 and pcmepp#7), while the sum keeps improving.
    return TrainConfig(
        name=f"demo_{pooling}",
        model=ModelConfig(
            embed_size=128,
            image=ImageEncoderConfig(img_dim=64, mlp=True, pooling=pooling, size_augment=0.2),
            text=TextEncoderConfig(kind="bigru", word_dim=64, pooling=pooling, augment=0.2),
        ),
        loss=LossConfig(margin=0.2, negatives="sum", warmup_epochs=0),
        optim=OptimConfig(lr=1e-3, weight_decay=1e-4, lr_decay_epochs=[4], lr_decay=0.1, grad_clip=2.0),
        data=DataConfig(
            kind="synthetic",
            val_split="val",
            test_split="test",
            val_max_images=None,
            vocab_min_count=1,
            synthetic={"num_train": 1700, "num_val": 300, "num_test": 500},
        ),
        epochs=5,
        batch_size=128,
        eval_protocol="kcaptions",
    )


@register_preset("demo_gpo", "built-in synthetic scenes, small VSE∞ (GPO on both sides); trains in about a minute on a CPU")
def demo_gpo() -> TrainConfig:
    return _demo("gpo")


@register_preset("demo_mean", "as demo_gpo with mean pooling on both sides")
def demo_mean() -> TrainConfig:
    return _demo("mean")


@register_preset("demo_max", "as demo_gpo with max pooling on both sides")
def demo_max() -> TrainConfig:
    return _demo("max")
