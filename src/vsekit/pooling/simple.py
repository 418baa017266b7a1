"""The fixed poolings that GPO generalises: mean, max and K-max."""

from __future__ import annotations

import torch
from torch import Tensor

from vsekit.errors import ConfigError

from .registry import SetPooling, register_pooling
from .sets import Lengths, accumulation_dtype, fill_padding, length_mask, masked_amax, prepare_sets


@register_pooling("mean", "avg")
class MeanPool(SetPooling):
    """Average over the valid elements (weight ``1/len`` on every valid rank); no sort."""

    def forward(self, features: Tensor, lengths: Lengths) -> tuple[Tensor, Tensor]:
        """Pool ``features`` (B×L×D) over their first ``lengths`` elements."""
        lens, valid = prepare_sets(features, lengths)
        wide = accumulation_dtype(features.dtype)  # half precision: sum in float32 (36 values near 6e4 overflow fp16)
        counts = lens.to(features.device, wide).unsqueeze(1)
        if lens.device.type == "cpu" and int(lens.min()) == features.shape[1]:  # all full: no masking
            pooled = features.sum(1, dtype=wide) / counts
        else:
            pooled = fill_padding(features, valid, 0).sum(1, dtype=wide) / counts
        return pooled.to(features.dtype), (valid.to(wide) / counts).to(features.dtype)


@register_pooling("max")
class MaxPool(SetPooling):
    """Per-dimension maximum over the valid elements (weight 1 on rank 0); a masked ``amax``."""

    def forward(self, features: Tensor, lengths: Lengths) -> tuple[Tensor, Tensor]:
        """Pool ``features`` (B×L×D) over their first ``lengths`` elements."""
        lens, valid = prepare_sets(features, lengths)
        pooled = masked_amax(features, valid)
        weights = torch.zeros(valid.shape, dtype=features.dtype, device=features.device)
        weights[:, 0] = 1
        return pooled, weights


@register_pooling("kmax", suffix_arg="k")
class KMaxPool(SetPooling):
    """Mean of the ``min(k, len)`` largest values of each dimension (``torch.topk``, no full sort).

    Args:
        k: number of top values averaged (``k=1`` is max pooling, ``k >= len`` mean pooling).
    """

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"kmax pooling needs an integer k >= 1, got {k!r}")
        self.k = k

    def extra_repr(self) -> str:
        return f"k={self.k}"

    def forward(self, features: Tensor, lengths: Lengths) -> tuple[Tensor, Tensor]:
        """Pool ``features`` (B×L×D) over their first ``lengths`` elements."""
        lens, valid = prepare_sets(features, lengths)
        top = min(self.k, features.shape[1])
        counts = lens.clamp(max=self.k).to(features.device)
        values = fill_padding(features, valid, float("-inf")).topk(top, dim=1).values
        wide = accumulation_dtype(features.dtype)  # half precision: sum in float32
        summed = fill_padding(values, length_mask(counts, top), 0).sum(1, dtype=wide)
        pooled = (summed / counts.to(wide).unsqueeze(1)).to(features.dtype)
        weights = length_mask(counts, features.shape[1]).to(features.dtype) / counts.to(features.dtype).unsqueeze(1)
        return pooled, weights
