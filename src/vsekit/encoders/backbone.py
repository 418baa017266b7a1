"""Raw-image encoders: a CNN backbone (:mod:`vsekit.backbones`) trained with the embedding.

* ``backbone`` (:class:`GridImageEncoder`, VSE∞ ``EncoderImageFull``): the backbone's feature map is
  a set of grid vectors (row-major), thinned by the grid size augmentation in training, projected by
  ``fc`` and pooled (GPO by default).
* ``cnn_global`` (:class:`GlobalCNNImageEncoder`, VSE++ ``EncoderImageFull``): the feature map's
  global average, l2-normalised, then ``fc``.

Both take B×3×S×S pixels from :class:`vsekit.data.images.PixelInput` (``input_kind = "pixels"``) and
build the backbone as ``create_backbone(cfg.backbone, cfg.pretrained)``. The width of ``fc``'s input
is the backbone's ``out_dim`` (1280 for ``efficientnet_lite0``, 2048 for the ResNets): ``cfg.img_dim``
describes precomputed features and is not used by these encoders. Freezing, the backbone learning-rate
factor and the unfreezing ramp are training settings (``optim.freeze``, ``optim.lr_mults`` and
``optim.unfreeze_ramp`` on the module path ``image_encoder.backbone``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..config import ImageEncoderConfig
from ..errors import ConfigError
from ..pooling import create_pooling
from .common import drop_grid_elements, drop_set_elements, l2norm
from .registry import register_image_encoder

if TYPE_CHECKING:
    from ..data.images import PixelInput


def _xavier_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """``Linear(in_dim, out_dim)`` with Xavier-uniform weights (``r = sqrt(6 / (in + out))``) and zero bias."""
    fc = nn.Linear(in_dim, out_dim)
    r = math.sqrt(6.0) / math.sqrt(in_dim + out_dim)
    nn.init.uniform_(fc.weight, -r, r)
    nn.init.zeros_(fc.bias)
    return fc


class _RawImageEncoder(nn.Module):
    """The parts both raw-image encoders share: ``backbone``, ``fc`` and the pixel input spec."""

    input_kind = "pixels"
    options = ("backbone", "pretrained", "image_size")

    def __init__(self, cfg: ImageEncoderConfig, embed_size: int) -> None:
        super().__init__()
        from ..backbones import create_backbone

        self.cfg = cfg
        try:
            self.backbone = create_backbone(cfg.backbone, cfg.pretrained)
        except ConfigError as e:
            raise ConfigError(f"model.image.backbone: {e}") from None
        self.img_dim = int(self.backbone.out_dim)
        self.fc = _xavier_linear(self.img_dim, embed_size)

    def input_spec(self) -> PixelInput:
        """How dataset images become this encoder's input: a :class:`vsekit.data.images.PixelInput`
        (``cfg.image_size`` square, the backbone's mean and std)."""
        from ..data.images import PixelInput

        return PixelInput(self.cfg.image_size, self.backbone.input_mean, self.backbone.input_std)


@register_image_encoder("backbone")
class GridImageEncoder(_RawImageEncoder):
    """VSE∞ grid encoder: CNN feature map -> grid vectors -> ``fc`` -> pooling.

    The B×C×h×w feature map becomes B×(h·w)×C grid vectors (row-major). In training, with
    ``cfg.size_augment > 0``, grid cells are dropped (``size_augment_mode='grid'``: the VSE∞ per-sample
    rate of :func:`~vsekit.encoders.common.drop_grid_elements`; ``'region'``: i.i.d.), the kept cells
    moved to the front and the batch truncated to the longest kept set. ``fc`` (Xavier, no MLP: the
    paper's single linear layer for grid features) projects every cell, and ``gpool`` (``cfg.pooling``)
    pools them. In eval mode all h·w cells are used.

    Args:
        cfg: the image encoder config (``backbone``, ``pretrained``, ``image_size``, ``pooling``,
            ``size_augment``, ``size_augment_mode``).
        embed_size: joint embedding size.
    """

    def __init__(self, cfg: ImageEncoderConfig, embed_size: int) -> None:
        super().__init__(cfg, embed_size)
        self.gpool = create_pooling(cfg.pooling)

    def grid(self, images: Tensor) -> Tensor:
        """B×3×S×S pixels -> B×(h·w)×C backbone grid vectors, row-major."""
        return self.backbone(images).flatten(2).transpose(1, 2)

    def forward(self, images: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``images``: B×3×S×S normalised pixels (``lengths`` is not used: every image has h·w cells).

        Returns:
            B×embed_size unnormalised embeddings.
        """
        x = self.grid(images)
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64, device=x.device)
        if self.training and self.cfg.size_augment > 0:
            drop = drop_grid_elements if self.cfg.size_augment_mode == "grid" else drop_set_elements
            x, lengths = drop(x, lengths, self.cfg.size_augment)
            x = x[:, : int(lengths.max())]
        pooled, _ = self.gpool(self.fc(x), lengths)
        return pooled


@register_image_encoder("cnn_global")
class GlobalCNNImageEncoder(_RawImageEncoder):
    """VSE++ full-image encoder: CNN -> global average pool -> l2norm -> ``fc``.

    The CNN feature is l2-normalised *before* the projection, as in VSE++ (the model normalises the
    embedding again after it). ``cfg.pooling`` and the size augmentation do not apply.

    Args:
        cfg: the image encoder config (``backbone``, ``pretrained``, ``image_size``).
        embed_size: joint embedding size.
    """

    def forward(self, images: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``images``: B×3×S×S normalised pixels (``lengths`` is not used). Returns B×embed_size."""
        return self.fc(l2norm(self.backbone(images).mean(dim=(2, 3))))
