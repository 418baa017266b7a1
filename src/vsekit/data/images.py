"""Raw images: reading files, the VSE∞ train/test transforms, and a dataset of image files.

* :func:`open_image`: the one place images are decoded (files or bytes; every failure a ``DataError``).
* :func:`load_image`: any image file -> H×W×3 uint8 RGB array.
* :class:`PixelInput`: the ``input_spec()`` of raw-image encoders. It batches images into normalised
  B×3×S×S tensors. Training (VSE∞ ``RawImageDataset``): a random crop whose sides are the same
  fraction ``r ~ U[0.6, 1)`` of the image's sides, at a random position, resized to S×S (aspect ratio
  not kept), flipped horizontally with probability 0.5. Test: the whole image resized to S×S. Then
  ``(pixels / 255 - mean) / std``. Resizing is bilinear with antialiasing (``torch`` on uint8, within
  one grey level of PIL's bilinear resize); the official code uses OpenCV's bilinear resize, which does
  not antialias when shrinking.
* :class:`KarpathyImageDataset`: the images of one split of a Karpathy-style JSON, read lazily from an
  image folder, caption-indexed like every vsekit dataset (``image_kind = "pixels"``).

VSE++ trains its full-image encoder on ``RandomResizedCrop(224)`` crops and tests on a 224 centre crop of
the image resized to 256; vsekit uses the VSE∞ transforms above for every raw-image encoder.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vsekit.data.datasets import ListedCaptionDataset
from vsekit.data.karpathy import KarpathyJSON, captions_from_records
from vsekit.errors import ConfigError, DataError, first_line

__all__ = ["Crop", "ImageTooLargeError", "KarpathyImageDataset", "PixelInput", "as_pixels", "load_image", "open_image"]


class ImageTooLargeError(DataError):
    """An image has more pixels than the caller allows (read from its header, before anything is decoded)."""


def open_image(
    source: str | os.PathLike | bytes, *, name: str | None = None, max_pixels: int | None = None, thumbnail: int = 0
) -> Any:
    """Decode an image file or encoded bytes as an RGB PIL image: the one place vsekit decodes images.

    Args:
        source: a file path, or the bytes of an encoded image (an upload, a query).
        name: how messages name the image (default: the path, or ``image`` for bytes).
        max_pixels: refuse images whose width × height is larger, checked from the header before decoding
            (a small file can expand to gigabytes of pixels). Without it, Pillow's own decompression-bomb
            limit still applies.
        thumbnail: when positive, decode at a reduced scale where the format allows (JPEG), apply the EXIF
            orientation and shrink to fit a ``thumbnail`` × ``thumbnail`` box.

    Returns:
        An RGB ``PIL.Image.Image``, fully decoded.

    Raises:
        ImageTooLargeError: the image has more than ``max_pixels`` pixels.
        DataError: every other failure (a missing file, a folder, not an image, truncated or corrupt data,
            a decompression bomb), as one line naming ``name``.
    """
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise ConfigError("reading image files needs Pillow: pip install pillow") from None
    encoded = isinstance(source, (bytes, bytearray, memoryview))
    label = name if name is not None else ("image" if encoded else str(source))
    try:
        with Image.open(io.BytesIO(bytes(source)) if encoded else source) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageTooLargeError(f"{label}: {im.width}×{im.height} pixels is too large (at most {max_pixels:,})")
            if thumbnail > 0:
                im.draft("RGB", (thumbnail, thumbnail))  # JPEG: decode at a reduced scale
                rgb = ImageOps.exif_transpose(im).convert("RGB")
                rgb.thumbnail((thumbnail, thumbnail))
                return rgb
            return im.convert("RGB")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"image file not found: {label}") from None
    except IsADirectoryError:
        raise DataError(f"{label}: expected an image file, got a folder") from None
    except UnidentifiedImageError:
        raise DataError(f"{label}: not a readable image file") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{label}: refused, the image is too large to decode safely ({first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data fails in many ways inside Pillow's decoders
        raise DataError(f"{label}: cannot decode the image ({first_line(e)})") from None


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an H×W×3 uint8 RGB array (see :func:`open_image`).

    Grayscale and palette images are expanded to RGB; an alpha channel is dropped (not composited).

    Args:
        path: the image file (any format Pillow reads: JPEG, PNG, BMP, WebP, TIFF, ...).

    Returns:
        The H×W×3 uint8 array.

    Raises:
        DataError: naming the file if it is missing or not a readable image.
    """
    return np.array(open_image(path), dtype=np.uint8)


def as_pixels(item: Any, index: int = 0) -> np.ndarray:
    """One image as an H×W×3 uint8 array.

    Args:
        item: an H×W×3 (or H×W grayscale, or H×W×4 RGBA) uint8 array or tensor, a PIL image, or an
            image file path.
        index: the item's position in its batch (for error messages).

    Raises:
        DataError: for anything else, naming the batch position and what was given.
    """
    if isinstance(item, (str, os.PathLike)):
        return load_image(item)
    if type(item).__module__.startswith("PIL."):
        return np.array(item.convert("RGB"), dtype=np.uint8)
    if isinstance(item, Tensor):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray):
        raise DataError(f"images[{index}]: expected an H×W×3 uint8 array, a PIL image or a file path, got {type(item).__name__}")
    if item.dtype != np.uint8:
        raise DataError(f"images[{index}]: expected uint8 pixels (0-255), got dtype {item.dtype}")
    if item.ndim == 2:
        item = np.repeat(item[:, :, None], 3, axis=2)
    elif item.ndim == 3 and item.shape[2] == 4:
        item = item[:, :, :3]
    if item.ndim != 3 or item.shape[2] != 3 or item.shape[0] == 0 or item.shape[1] == 0:
        raise DataError(f"images[{index}]: expected an H×W×3 image, got shape {item.shape}")
    return item


@dataclass(frozen=True)
class Crop:
    """A crop box and flip of one training image (pixel units of the source image).

    Attributes:
        top: first row.
        left: first column.
        height: rows.
        width: columns.
        flip: mirror the result horizontally.
    """

    top: int
    left: int
    height: int
    width: int
    flip: bool


class PixelInput:
    """Batches raw images into normalised square tensors (the ``input_spec`` of raw-image encoders).

    Picklable, so it works in DataLoader worker processes. Random draws use the global torch RNG
    (saved in training checkpoints, so a resumed run draws the same crops).

    Args:
        image_size: side ``S`` of the square network input.
        mean: RGB means subtracted after scaling pixels to [0, 1].
        std: RGB standard deviations dividing them.
        min_crop: smallest training crop, as a fraction of the image sides (VSE∞: 0.6).

    Raises:
        ConfigError: if a setting is out of range.
    """

    kind = "pixels"

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        min_crop: float = 0.6,
    ) -> None:
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise ConfigError(f"model.image.image_size: expected a positive integer, got {image_size!r}")
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"pixel statistics: expected 3 means and 3 positive stds, got {mean}, {std}")
        if not 0.0 < min_crop <= 1.0:
            raise ConfigError(f"min_crop: expected a fraction in (0, 1], got {min_crop}")
        self.image_size = image_size
        self.mean = mean
        self.std = std
        self.min_crop = float(min_crop)

    def __repr__(self) -> str:
        return f"PixelInput(image_size={self.image_size}, mean={self.mean}, std={self.std})"

    def sample_crops(self, shapes: Sequence[tuple[int, int]]) -> list[Crop]:
        """Draw the VSE∞ training crop of every image.

        For an H×W image: ``r ~ U[min_crop, 1)``, crop ``floor(r·H)`` × ``floor(r·W)`` (at least 1),
        top-left corner uniform over the positions that keep the crop inside, flip with probability 0.5.

        Args:
            shapes: ``(H, W)`` of every image.

        Returns:
            One :class:`Crop` per image.
        """
        u = torch.rand(len(shapes), 4, dtype=torch.float64).tolist()
        crops = []
        for (h, w), (ur, uy, ux, uf) in zip(shapes, u):
            r = self.min_crop + (1.0 - self.min_crop) * ur
            ch, cw = max(1, int(h * r)), max(1, int(w * r))
            top, left = int(uy * (h - ch + 1)), int(ux * (w - cw + 1))
            crops.append(Crop(top, left, ch, cw, uf < 0.5))
        return crops

    def transform(self, images: Sequence[np.ndarray], crops: Sequence[Crop] | None = None) -> Tensor:
        """Crop, resize to S×S, flip and normalise a batch of images.

        Images (or crops) of the same size are resized together in one call.

        Args:
            images: H×W×3 uint8 arrays.
            crops: one :class:`Crop` per image (training), or None for the whole images (test).

        Returns:
            B×3×S×S float32 normalised pixels.
        """
        s = self.image_size
        out = torch.empty(len(images), 3, s, s, dtype=torch.uint8)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        views: list[Tensor] = []
        for i, img in enumerate(images):
            if not img.flags.writeable or min(img.strides) < 0:  # read-only or reversed views: copy
                img = np.array(img)
            t = torch.from_numpy(img).permute(2, 0, 1)  # 3×H×W view
            if crops is not None:
                c = crops[i]
                t = t[:, c.top : c.top + c.height, c.left : c.left + c.width]
            views.append(t)
            groups[(t.shape[1], t.shape[2])].append(i)
        for (h, w), idx in groups.items():
            batch = torch.stack([views[i] for i in idx])
            if (h, w) != (s, s):
                batch = F.interpolate(batch, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            out[idx] = batch
        if crops is not None:
            flip = [i for i, c in enumerate(crops) if c.flip]
            if flip:
                out[flip] = out[flip].flip(-1)
        x = out.to(torch.float32)
        scale = torch.tensor([1.0 / (255.0 * sd) for sd in self.std]).view(1, 3, 1, 1)
        shift = torch.tensor([m / sd for m, sd in zip(self.mean, self.std)]).view(1, 3, 1, 1)
        return x.mul_(scale).sub_(shift)

    def collate(self, arrays: Sequence[Any], train: bool = False) -> tuple[Tensor, Tensor]:
        """Batch images for a raw-image encoder.

        Args:
            arrays: H×W×3 uint8 arrays (grayscale/RGBA arrays, PIL images and file paths also work).
            train: random crop + flip (training) or the whole image (test).

        Returns:
            ``(B×3×S×S float32 pixels, B int64 ones)``; the encoder sets the grid lengths.

        Raises:
            DataError: if the batch is empty or an item is not an image.
        """
        if len(arrays) == 0:
            raise DataError("images: expected at least one image")
        images = [as_pixels(a, i) for i, a in enumerate(arrays)]
        crops = self.sample_crops([img.shape[:2] for img in images]) if train else None
        return self.transform(images, crops), torch.ones(len(images), dtype=torch.int64)


class KarpathyImageDataset(ListedCaptionDataset):
    """Raw images of one split of a Karpathy-style JSON (``dataset_coco.json``, ``dataset_rsicd.json``, ...).

    Caption-indexed: image ``i`` has captions ``i*k .. i*k+k-1``. :meth:`image` reads the file when asked
    (nothing is cached); the existence of every file is checked once, at construction.

    Args:
        json_path: the JSON file.
        image_root: the folder holding ``filepath/filename`` of every record.
        split: a split name, or several joined with ``+`` (``train+restval``).
        captions_per_image: ``k``: the first ``k`` captions of every image are used.

    Raises:
        DataError: if the JSON is malformed, the split is unknown, an image has fewer than ``k``
            captions, or an image file is missing.
    """

    image_kind = "pixels"

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_root: str | os.PathLike,
        split: str,
        captions_per_image: int = 5,
    ) -> None:
        root = Path(image_root)
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}")
        records = KarpathyJSON(json_path).records(split.split("+"))
        self.paths = [root / r.filepath / r.filename for r in records]
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"image file not found: {missing[0]}{more}, listed in {json_path} for split {split!r}")
        self._captions = captions_from_records(records, captions_per_image)
        self.split = split
        self.num_images = len(records)
        self.captions_per_image = captions_per_image
        self.feature_dim = 3  # the channels of the H×W×3 images

    def image(self, i: int) -> np.ndarray:
        """Read image ``i`` as an H×W×3 uint8 RGB array."""
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {i} out of range for {self.num_images} images")
        return load_image(self.paths[i])
