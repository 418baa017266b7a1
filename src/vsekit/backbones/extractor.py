"""The features that ``vsekit extract`` stores, for any images: :class:`FeatureExtractor`.

Training and evaluation read features extracted once (:mod:`vsekit.extract`); a model trained on them, or a
search index of such a model, turns new photos into the same features with this class (the same backbone in its
inference form, preprocessing, views and storage precision), so that an indexed image given as a query has the
features of its stored row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vsekit.data.files import FEATURES_FORMAT
from vsekit.data.views import VIEWS, check_views
from vsekit.device import resolve_device
from vsekit.errors import ConfigError

__all__ = ["FeatureExtractor", "extractor_settings"]

FORMAT = FEATURES_FORMAT


def extractor_settings(backbone: str, image_size: int, dtype: str, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """What ``features.json`` records of an extractor: the format, backbone, input size, dtype and preprocessing."""
    return {
        "format": FORMAT,
        "backbone": backbone,
        "image_size": image_size,
        "dtype": dtype,
        "preprocessing": {
            "resize": f"whole image to {image_size}x{image_size} (aspect ratio not kept), bilinear, antialiased",
            "scale": "pixels / 255",
            "mean": list(mean),
            "std": list(std),
        },
    }


class FeatureExtractor:
    """The grid features that ``vsekit extract`` stores, for any images: the same backbone (in its inference
    form), preprocessing, views and storage precision. A search index of a feature model embeds query images
    with it, so that an indexed image given as a query has the features of its stored row.

    >>> ex = FeatureExtractor("efficientnet_lite0")  # doctest: +SKIP
    >>> plain, turned = ex(["photo.jpg"], views=[None, "rot90"])  # two 1×49×1280 float32 arrays  # doctest: +SKIP

    Args:
        backbone: a :func:`vsekit.backbones.list_backbones` name (pretrained weights).
        image_size: side of the square network input.
        dtype: the storage precision, ``float16`` or ``float32``; features are rounded to it.
        device: ``auto``, ``cpu``, ``cuda``, ...

    Raises:
        ConfigError: for an unknown backbone or dtype, or a size below 1.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", image_size: int = 224, dtype: str = "float16",
                 device: str = "cpu") -> None:  # fmt: skip
        from vsekit.backbones.registry import create_backbone
        from vsekit.data.images import PixelInput

        if dtype not in ("float16", "float32"):
            raise ConfigError(f"dtype: expected float16 or float32, got {dtype!r}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"image_size: expected a positive integer, got {image_size!r}")
        self.device = resolve_device(device)
        # the backbone's inference form: channels-last memory (1.3-1.5x faster for these CNNs on a CPU, and what
        # cuDNN prefers) and, for EfficientNet-Lite0, BatchNorm folded into the convolutions (1.6x more)
        self.net = create_backbone(backbone, pretrained=True).to(self.device).for_inference()
        self.pixels = PixelInput(image_size, self.net.input_mean, self.net.input_std)
        self.dtype = dtype
        self.settings = extractor_settings(backbone, image_size, dtype, self.net.input_mean, self.net.input_std)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], where: str, device: str = "cpu") -> FeatureExtractor:
        """The extractor that wrote a features folder, from its ``features.json`` content.

        Args:
            meta: the parsed ``features.json`` (or the same keys as recorded in a search index).
            where: what ``meta`` came from, named in errors.
            device: as in the constructor.

        Raises:
            ConfigError: naming ``where`` if ``meta`` is not vsekit feature metadata, or its preprocessing is not
                this version's for that backbone (its features could not be reproduced).
        """
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ConfigError(f"{where}: not vsekit feature metadata (format {found!r}, expected {FORMAT!r})")
        backbone, size, dtype = meta.get("backbone"), meta.get("image_size"), meta.get("dtype")
        if not isinstance(backbone, str) or not isinstance(size, int) or not isinstance(dtype, str):
            raise ConfigError(f"{where}: expected a backbone name, an integer image_size and a dtype")
        try:
            extractor = cls(backbone, size, dtype, device)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if {k: meta.get(k) for k in extractor.settings} != extractor.settings:
            raise ConfigError(f"{where}: preprocessing {meta.get('preprocessing')} is not this vsekit version's for "
                              f"{backbone} ({extractor.settings['preprocessing']})")  # fmt: skip
        return extractor

    def rows(self, pixels: torch.Tensor, view: str | None = None) -> np.ndarray:
        """B×3×S×S network input (``self.pixels.collate``) -> the B×(h·w)×C feature rows, in ``dtype``, that a
        features file stores for these images or for one of their :data:`VIEWS`."""
        if view is not None:
            pixels = VIEWS[view](pixels)
        fmap = self.net(pixels.to(self.device).contiguous(memory_format=torch.channels_last))  # B×C×h×w
        return fmap.flatten(2).transpose(1, 2).float().cpu().numpy().astype(self.dtype)

    @torch.inference_mode()
    def __call__(self, images: Sequence[Any], views: Sequence[str | None] = (None,)) -> list[np.ndarray]:
        """The stored features of images.

        Args:
            images: file paths, PIL images or H×W×3 uint8 arrays.
            views: ``None`` (the image itself) and/or :data:`VIEWS` names.

        Returns:
            Per view, an N×(h·w)×C float32 array: row ``i`` equals what ``vsekit extract`` writes for image ``i``
            (rounded to ``dtype``).

        Raises:
            DataError: if an item is not a readable image.
            ConfigError: for an unknown view.
        """
        check_views([v for v in views if v is not None], "views")
        x, _ = self.pixels.collate(list(images), train=False)
        return [self.rows(x, view).astype(np.float32) for view in views]
