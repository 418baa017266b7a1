"""The backbone contract (:class:`Backbone`) and the registry behind :func:`create_backbone`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_BackboneFactory = Callable[[bool], "Backbone"]
_BACKBONES: dict[str, tuple[_BackboneFactory, str]] = {}


class Backbone(nn.Module):
    """Base class of the backbones: a CNN mapping B×3×H×W pixels to a B×C×h×w feature map.

    Subclasses set :attr:`out_dim`, :attr:`stride`, :attr:`input_mean` and :attr:`input_std` and
    implement :meth:`forward`.

    Attributes:
        out_dim: channels ``C`` of the feature map.
        stride: total downsampling factor of the feature map.
        input_mean: RGB means subtracted from pixels scaled to [0, 1].
        input_std: RGB standard deviations dividing them.
    """

    out_dim: int
    stride: int
    input_mean: tuple[float, float, float]
    input_std: tuple[float, float, float]

    def train(self, mode: bool = True) -> Backbone:
        """Set the training mode, but keep every BatchNorm layer in eval mode (frozen statistics)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, pixels: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``pixels``: B×3×H×W normalised images. Returns the B×``out_dim``×h×w feature map."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, stride={self.stride}"

    def for_inference(self) -> nn.Module:
        """A module computing the same feature map as this backbone, for inference only (no gradients,
        no training mode), in channels-last memory. Backbones that can be folded into fewer operations
        (see :class:`FoldedEfficientNetLite0`) return a faster copy built from the current weights; the
        default is this backbone itself in eval mode. Feature extraction (``vsekit extract``) uses it."""
        return self.eval().to(memory_format=torch.channels_last)


def register_backbone(name: str, description: str) -> Callable[[_BackboneFactory], _BackboneFactory]:
    """Decorator: make ``factory(pretrained: bool) -> Backbone`` available as backbone ``name``.

    Args:
        name: the name used by ``model.image.backbone`` and :func:`create_backbone`.
        description: one line for listings.

    Raises:
        ValueError: if the name is already taken.
    """

    def deco(factory: _BackboneFactory) -> _BackboneFactory:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = (factory, description)
        return factory

    return deco


def list_backbones() -> list[str]:
    """Registered backbone names, sorted (torchvision ones included, even when torchvision is absent)."""
    return sorted(_BACKBONES)


def describe_backbones() -> dict[str, str]:
    """Backbone name -> one-line description."""
    return {name: desc for name, (_, desc) in sorted(_BACKBONES.items())}


def create_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a backbone by name.

    Args:
        name: a :func:`list_backbones` name.
        pretrained: load the pretrained (ImageNet) weights; ``False`` gives a random init (tests).

    Returns:
        The backbone, in training mode with frozen BatchNorm statistics.

    Raises:
        ConfigError: for an unknown name, a missing optional package or a missing weight file.
    """
    if name not in _BACKBONES:
        raise ConfigError(f"backbone {name!r}: unknown (known: {', '.join(list_backbones())})")
    net = _BACKBONES[name][0](bool(pretrained))
    return net.train()


def read_weights(path: Path, name: str) -> dict[str, Tensor]:
    """A state dict from a local file (tensors only), as a one-line ConfigError when unreadable."""
    if not path.is_file():
        raise ConfigError(f"backbone {name!r}: weight file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ConfigError(f"backbone {name!r}: {path}: not a readable weight file ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"backbone {name!r}: {path}: expected a state dict")
    return state
