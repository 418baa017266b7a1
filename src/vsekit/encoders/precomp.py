"""Image encoder over precomputed feature sets (regions, grid cells, frames, or one global vector)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..config import ImageEncoderConfig
from ..pooling import create_pooling
from ..data.collate import FeatureInput
from .common import MLP, drop_grid_elements, drop_set_elements, valid_mask
from .registry import register_image_encoder


@register_image_encoder("precomp")
class PrecompImageEncoder(nn.Module):
    """Precomputed feature sets -> joint embedding (VSE∞ ``EncoderImageAggr``).

    ``fc`` (Xavier) plus, when ``cfg.mlp``, the two-layer residual MLP with BatchNorm (region features);
    ``fc`` alone is the VSE∞ grid path and, with one vector per image and mean pooling, the VSE++
    precomputed encoder. In training, ``size_augment`` drops elements: i.i.d. per element
    (``size_augment_mode='region'``) or at a per-sample rate (``'grid'``).

    Args:
        cfg: the image encoder config.
        embed_size: joint embedding size.
    """

    def __init__(self, cfg: ImageEncoderConfig, embed_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(cfg.img_dim, embed_size)
        r = math.sqrt(6.0) / math.sqrt(cfg.img_dim + embed_size)
        nn.init.uniform_(self.fc.weight, -r, r)
        nn.init.zeros_(self.fc.bias)
        self.mlp = MLP(cfg.img_dim, embed_size // 2, embed_size) if cfg.mlp else None
        self.gpool = create_pooling(cfg.pooling)

    input_kind = "features"

    def input_spec(self) -> FeatureInput:
        """How dataset images become this encoder's input."""
        return FeatureInput(self.cfg.img_dim)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """``features``: B×K×img_dim padded sets, ``lengths``: B set sizes. Returns B×embed_size (unnormalised)."""
        if self.training and self.cfg.size_augment > 0:
            drop = drop_grid_elements if self.cfg.size_augment_mode == "grid" else drop_set_elements
            features, lengths = drop(features, lengths, self.cfg.size_augment)
        x = self.fc(features)
        if self.mlp is not None:
            x = x + self.mlp(features, valid_mask(lengths, features.shape[1]))
        pooled, _ = self.gpool(x, lengths)
        return pooled
