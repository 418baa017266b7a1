"""The built-in synthetic scenes drawn as images, for models that read raw pixels.

``make_synthetic(render=True)`` (``data.synthetic.render=true``) draws every scene of
:mod:`vsekit.data.synthetic` instead of making region features: the same objects (category, colour,
size) and the same captions. Each image is drawn with NumPy only:

* background: a per-scene grey level in [100, 150] with a small per-channel tint, plus uniform pixel
  noise of ±8 grey levels;
* clutter: every background region of the scene is a low-contrast textured rectangle (horizontal or
  vertical stripes, a checkerboard or a dot grid, lighter or darker: eight types, ``clutter % 8``);
* objects: a flat-coloured shape per category (:data:`SHAPES`: 16 solid shapes, then the same 16 as
  outlines for categories 16-31), of colour :data:`COLOR_RGB` and side :data:`SIZE_FRACTIONS` of the
  image (small, medium, large), at a uniformly random position inside the image. Larger objects are
  drawn first so that small ones stay visible; objects may overlap.

Images are drawn when asked (:meth:`RenderedScenes.image`: 10,000 images of 64 px in about 1.5 s on
one CPU core) from per-scene draws made at construction, so a split costs no memory beyond its scene
lists and an image is the same every time. The feature settings ``feature_dim``, ``attribute_scale``, ``noise`` and ``scene_offset`` do not
apply to images.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from vsekit.data.datasets import ListedCaptionDataset

__all__ = ["COLOR_RGB", "SHAPES", "SIZE_FRACTIONS", "RenderedScenes", "render_split", "shape_mask"]

# RGB of every colour of vsekit.data.synthetic.COLORS, in that order.
COLOR_RGB: tuple[tuple[int, int, int], ...] = (
    (220, 30, 30),  # red
    (40, 70, 220),  # blue
    (40, 170, 60),  # green
    (240, 220, 40),  # yellow
    (245, 245, 245),  # white
    (15, 15, 15),  # black
    (245, 140, 20),  # orange
    (140, 50, 190),  # purple
    (125, 75, 35),  # brown
    (245, 150, 200),  # pink
)
# Side of an object's square box relative to the image side, per size (small, medium, large).
SIZE_FRACTIONS: tuple[float, float, float] = (0.14, 0.21, 0.30)
SHAPES: tuple[str, ...] = (
    "disc", "square", "triangle", "inverted triangle", "plus", "x-cross", "diamond", "horizontal bar",
    "vertical bar", "dome", "hourglass", "L", "T", "chevron", "two dots", "checker",
)  # fmt: skip
_NOISE = 8  # uniform background noise, ± grey levels
_CLUTTER_CONTRAST = 24  # grey levels added or removed by a clutter texture


def _solid(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of solid shape ``shape`` on pixel-centre coordinates u (right), v (down) in (-1, 1)."""
    au, av = np.abs(u), np.abs(v)
    inside = np.maximum(au, av) <= 0.95
    if shape == 0:  # disc
        return u * u + v * v <= 1.0
    if shape == 1:  # square
        return np.maximum(au, av) <= 0.8
    if shape == 2:  # triangle, apex up
        return (v <= 0.85) & (au <= (v + 0.95) * 0.55)
    if shape == 3:  # triangle, apex down
        return (v >= -0.85) & (au <= (0.95 - v) * 0.55)
    if shape == 4:  # plus
        return inside & ((au <= 0.3) | (av <= 0.3))
    if shape == 5:  # x-cross
        return inside & ((np.abs(u - v) <= 0.42) | (np.abs(u + v) <= 0.42))
    if shape == 6:  # diamond
        return au + av <= 1.0
    if shape == 7:  # horizontal bar
        return inside & (av <= 0.35)
    if shape == 8:  # vertical bar
        return inside & (au <= 0.35)
    if shape == 9:  # dome: the upper half of a disc
        return (u * u + (v - 0.45) ** 2 <= 1.0) & (v <= 0.45)
    if shape == 10:  # hourglass
        return (av <= 0.9) & (au <= av + 0.1)
    if shape == 11:  # L
        return inside & ((u <= -0.35) | (v >= 0.35))
    if shape == 12:  # T
        return inside & ((v <= -0.4) | (au <= 0.3))
    if shape == 13:  # chevron pointing up
        return inside & (np.abs(v + 0.3 - au) <= 0.4)
    if shape == 14:  # two dots side by side
        return ((u + 0.5) ** 2 + v * v <= 0.2) | ((u - 0.5) ** 2 + v * v <= 0.2)
    if shape == 15:  # 2×2 checker
        return inside & (u * v >= 0)
    raise ValueError(f"shape index {shape} out of range")


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion with the 4-neighbourhood, ``steps`` times (outside the box counts as empty)."""
    for _ in range(steps):
        p = np.pad(mask, 1)
        mask = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask


@functools.cache
def shape_mask(category: int, side: int) -> np.ndarray:
    """The side×side boolean mask of the shape of ``category`` (read-only, cached).

    Categories 0-15 are the solid :data:`SHAPES`; 16-31 are their outlines (the solid shape minus its
    erosion by ``max(1, round(0.1·side))`` pixels).
    """
    c = (np.arange(side) + 0.5) * (2.0 / side) - 1.0
    v, u = np.meshgrid(c, c, indexing="ij")
    mask = _solid(category % len(SHAPES), u, v)
    if category >= len(SHAPES):
        mask = mask & ~_erode(mask, max(1, round(0.1 * side)))
    mask.setflags(write=False)
    return mask


def object_side(size: int, image_size: int) -> int:
    """Pixel side of an object of size index ``size`` (0 small, 1 medium, 2 large) in an image."""
    return max(3, min(image_size, round(SIZE_FRACTIONS[size] * image_size)))


@functools.cache
def _row_mask(category: int, side: int) -> np.ndarray:
    """:func:`shape_mask` with every column repeated 3 times: a mask of the (side, 3·side) RGB row view."""
    return np.repeat(shape_mask(category, side), 3, axis=1)


def _textures(size: int) -> np.ndarray:
    """The 8 clutter textures as (8, size, 3·size) int16 RGB rows: stripes (two directions), checker,
    dots; adding, then subtracting."""
    y, x = np.ogrid[:size, :size]
    patterns = [
        (y // 2) % 2 + 0 * x,
        (x // 2) % 2 + 0 * y,
        (y // 3 + x // 3) % 2,
        ((y % 4) < 2) & ((x % 4) < 2),
    ]
    base = np.stack([np.asarray(t, dtype=np.int16) for t in patterns]) * _CLUTTER_CONTRAST
    return np.repeat(np.concatenate([base, -base]), 3, axis=2)


class RenderedScenes(ListedCaptionDataset):
    """Synthetic scenes drawn as H×W×3 uint8 images (``image_kind = "pixels"``), caption-indexed.

    Built by :func:`render_split`; see the module docstring for what is drawn. Everything random is
    drawn at construction (boxes, background, the offset of each image's window into one shared noise
    array), so :meth:`image` only paints. Painting works on the S×3S "RGB row" view of an image, where
    NumPy's inner loops run over whole rows.

    Args:
        image_size: side ``S`` of the square images.
        captions: ``num_images * captions_per_image`` captions.
        captions_per_image: ``k``.
        obj_starts: ``num_images + 1`` offsets of each image's objects in the object arrays.
        objects: (total, 6) int: category, colour, size, top, left, side, in drawing order per image.
        clutter_starts: ``num_images + 1`` offsets of each image's clutter regions.
        clutter: (total, 5) int: texture (0-7), top, left, height, width.
        background: (num_images, 3) background RGB.
        noise: (2S, 2S, 3) int16 pixel noise; image ``i`` uses the S×S window at ``noise_offsets[i]``
            (row, column).
        noise_offsets: (num_images, 2) window corners.
    """

    image_kind = "pixels"

    def __init__(
        self,
        image_size: int,
        captions: list[str],
        captions_per_image: int,
        obj_starts: np.ndarray,
        objects: np.ndarray,
        clutter_starts: np.ndarray,
        clutter: np.ndarray,
        background: np.ndarray,
        noise: np.ndarray,
        noise_offsets: np.ndarray,
    ) -> None:
        self.image_size = image_size
        self.num_images = len(obj_starts) - 1
        self.captions_per_image = captions_per_image
        self.feature_dim = 3  # the channels of the H×W×3 images
        self._captions = captions
        self._obj_starts = obj_starts.tolist()
        self._objects = objects.tolist()
        self._clutter_starts = clutter_starts.tolist()
        self._clutter = clutter.tolist()
        self._background = np.tile(background.astype(np.int16), (1, image_size))  # RGB rows
        self._noise = noise.reshape(noise.shape[0], -1)
        self._noise_offsets = noise_offsets.tolist()
        self._textures = _textures(image_size)
        self._color_rows = np.tile(np.array(COLOR_RGB, dtype=np.uint8), (1, image_size))

    def _check(self, i: int) -> None:
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {i} out of range for {self.num_images} images")

    def objects(self, i: int) -> list[dict[str, int]]:
        """The objects of image ``i`` in drawing order (larger first, so small ones stay visible).

        Returns:
            One dict per object: ``category``, ``color``, ``size`` (indices into the synthetic NOUNS,
            COLORS and SIZES) and the pixel box ``top``, ``left``, ``side``.
        """
        self._check(i)
        keys = ("category", "color", "size", "top", "left", "side")
        return [dict(zip(keys, o)) for o in self._objects[self._obj_starts[i] : self._obj_starts[i + 1]]]

    def image(self, i: int) -> np.ndarray:
        """Draw image ``i``: an S×S×3 uint8 RGB array (the same at every call)."""
        self._check(i)
        s = self.image_size
        oy, ox = self._noise_offsets[i]
        img = self._noise[oy : oy + s, 3 * ox : 3 * (ox + s)] + self._background[i]  # S×3S int16
        for kind, top, left, h, w in self._clutter[self._clutter_starts[i] : self._clutter_starts[i + 1]]:
            img[top : top + h, 3 * left : 3 * (left + w)] += self._textures[kind, :h, : 3 * w]
        np.clip(img, 0, 255, out=img)
        img = img.astype(np.uint8)
        for cat, color, _, top, left, side in self._objects[self._obj_starts[i] : self._obj_starts[i + 1]]:
            box = img[top : top + side, 3 * left : 3 * (left + side)]
            np.copyto(box, self._color_rows[color, : 3 * side], where=_row_mask(cat, side))
        return img.reshape(s, s, 3)


def render_split(
    cfg: Any,
    n_obj: np.ndarray,
    cats: np.ndarray,
    colors: np.ndarray,
    sizes: np.ndarray,
    n_clut: np.ndarray,
    clutter: np.ndarray,
    captions: list[str],
    seq: np.random.SeedSequence,
) -> RenderedScenes:
    """The rendered dataset of one synthetic split (called by :func:`vsekit.data.make_synthetic`).

    Args:
        cfg: the :class:`vsekit.data.SyntheticConfig` (``image_size``, ``captions_per_image``).
        n_obj: objects per image.
        cats: category of every object, image after image.
        colors: colour of every object.
        sizes: size index of every object.
        n_clut: clutter regions per image.
        clutter: clutter type of every clutter region.
        captions: the split's captions (the same as the feature version's).
        seq: seed of the drawing (positions, background, noise).
    """
    rng = np.random.default_rng(seq)
    s = int(cfg.image_size)
    num_images = len(n_obj)
    image_of = np.repeat(np.arange(num_images), n_obj)
    side = np.array([object_side(k, s) for k in range(len(SIZE_FRACTIONS))])[sizes]
    top = (rng.random(len(cats)) * (s - side + 1)).astype(np.int64)
    left = (rng.random(len(cats)) * (s - side + 1)).astype(np.int64)
    order = np.lexsort((-sizes, image_of))  # per image, larger objects first (stable)
    objects = np.stack([cats, colors, sizes, top, left, side], axis=1)[order]
    h = np.maximum(2, ((0.2 + 0.3 * rng.random(len(clutter))) * s).astype(np.int64))
    w = np.maximum(2, ((0.2 + 0.3 * rng.random(len(clutter))) * s).astype(np.int64))
    ctop = (rng.random(len(clutter)) * (s - h + 1)).astype(np.int64)
    cleft = (rng.random(len(clutter)) * (s - w + 1)).astype(np.int64)
    grey = 100.0 + 50.0 * rng.random((num_images, 1))
    background = np.rint(grey + rng.uniform(-10.0, 10.0, (num_images, 3))).astype(np.uint8)
    noise = rng.integers(-_NOISE, _NOISE + 1, size=(2 * s, 2 * s, 3), dtype=np.int16)
    return RenderedScenes(
        image_size=s,
        captions=captions,
        captions_per_image=cfg.captions_per_image,
        obj_starts=np.concatenate([[0], np.cumsum(n_obj)]),
        objects=objects,
        clutter_starts=np.concatenate([[0], np.cumsum(n_clut)]),
        clutter=np.stack([np.asarray(clutter) % 8, ctop, cleft, h, w], axis=1),
        background=background,
        noise=noise,
        noise_offsets=rng.integers(0, s + 1, size=(num_images, 2)),
    )
