"""Image encoder over precomputed feature sets (regions, grid cells, frames, or one global vector)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import ImageEncoderConfig
from ..pooling import create_pooling
from ..data.collate import FeatureInput
from .common import MLP, compact, fc_and_mlp_first, set_keep_mask, valid_mask
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

    # no family options: ``mlp`` is read here only, but the raw-image presets say ``mlp: false`` for their
    # fc-only projection, so it is a shared field (its default is true)

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
        """``features``: B×K×img_dim padded sets, ``lengths``: B set sizes. Returns B×embed_size (unnormalised).

        On CPU only the kept elements go through ``fc`` and the MLP (one fused product for both
        first layers); elsewhere every position does, with masked BatchNorm statistics, so that no
        step waits for the device. Both give the same embedding.
        """
        lengths = lengths.to(features.device)
        if self.training and self.cfg.size_augment > 0:
            keep = set_keep_mask(lengths, features.shape[1], self.cfg.size_augment, self.cfg.size_augment_mode)
        else:
            keep = valid_mask(lengths, features.shape[1])
        if features.device.type == "cpu":
            x, lengths = self._project_kept(features, keep)
        else:
            features, lengths = compact(features, keep)
            x = self._project_padded(features, valid_mask(lengths, features.shape[1]))
        pooled, _ = self.gpool(x, lengths)
        return pooled

    def _project_kept(self, features: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """fc (+ MLP) on the kept elements only, gathered into compact padded sets (zeros after)."""
        batch, length = keep.shape
        lengths = keep.sum(1)
        longest = int(lengths.max())
        rows = features[keep]  # kept elements, set by set, in their original order
        out, hidden = fc_and_mlp_first(rows, self.fc, self.mlp)
        if hidden is not None:
            out = out + self.mlp.forward_rows(rows, hidden)
        position = keep.cumsum(1) - 1  # rank of each kept element within its set
        target = (torch.arange(batch, device=keep.device).unsqueeze(1) * longest + position)[keep]
        x = out.new_zeros(batch * longest, out.shape[1]).index_copy(0, target, out)
        return x.view(batch, longest, out.shape[1]), lengths

    def _project_padded(self, features: Tensor, valid: Tensor) -> Tensor:
        """fc (+ MLP with masked BatchNorm statistics) on every position of the padded sets."""
        out, hidden = fc_and_mlp_first(features, self.fc, self.mlp)
        if hidden is not None:
            out = out + self.mlp.forward_masked(features, valid, hidden)
        return out
