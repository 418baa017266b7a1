"""``resnet50``, ``resnet152``, ``vgg19``: torchvision models (optional; weights from the torch hub cache)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError, first_line

from .registry import IMAGENET_MEAN, IMAGENET_STD, Backbone, read_weights, register_backbone


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
            first = first_line(e, 150)
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
            net.load_state_dict(read_weights(path, arch), strict=True)
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
