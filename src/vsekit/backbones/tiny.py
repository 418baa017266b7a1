"""``tiny``: a small fixed-init CNN for fast CPU tests."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import Tensor, nn


from .registry import Backbone, register_backbone


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
