"""Video-text data: frame features of variable length per video, on disk and generated.

A video is a *set of frame features* ``T_i×D`` (e.g. ResNet-152 or I3D vectors, one per sampled frame), so
the image-side machinery applies unchanged: :class:`~vsekit.encoders.PrecompImageEncoder` embeds every
frame with ``fc`` and pools over the frames (GPO for VSE∞, mean for the VSE++ baseline), and the size
augmentation drops frames. The datasets are caption-indexed like all others: video ``i`` has the ``k``
consecutive captions ``i*k .. i*k+k-1`` (MSR-VTT: 20, VATEX: 10).

**The frames layout** (``data.kind='frames'``, ``data.path`` = the folder), per split:

* ``{split}_frames.npy``: every video's frames concatenated, shape ``(T_total, D)``, float16 or float32,
  memory-mapped (never read whole);
* ``{split}_offsets.npy``: ``N + 1`` int64 offsets, ``offsets[0] = 0``, strictly increasing,
  ``offsets[N] = T_total``; video ``v`` is ``frames[offsets[v]:offsets[v+1]]``;
* ``{split}_caps.txt``: one caption per line, the ``k`` captions of a video on consecutive lines.

:func:`write_frames` writes it; :class:`FrameFeatureDataset` reads it.

**Generated videos** (``data.kind='synthetic_video'``, options in ``data.synthetic`` = fields of
:class:`SyntheticVideoConfig`): the objects of a scene of :mod:`vsekit.data.synthetic` (same world of
category, colour and size vectors, same caption generator) appear over time. Every object is on screen for
one contiguous stretch of the video; a frame's feature is the sum of the objects visible in it (scaled by
``1/sqrt(count)``), plus the video's background, a per-video offset and per-frame noise. Captions describe
some of the video's objects, so a caption matches a video through the few frames where those objects are.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsekit.data.datasets import FeatureCaptionDataset, ListedCaptionDataset
from vsekit.data.files import check_finite_rows, check_split_folder, open_npy, read_lines
from vsekit.data.synthetic import (
    SIZES,
    SyntheticConfig,
    World,
    check_options,
    describe_scene,
    generate_split,
    make_world,
)
from vsekit.errors import ConfigError, DataError
from vsekit.io import atomic_write, atomic_write_text

__all__ = [
    "FrameFeatureDataset",
    "SyntheticVideoConfig",
    "make_synthetic_video",
    "synthetic_video_split",
    "write_frames",
]


# ------------------------------------------------------------------------------------------ files


def _frame_paths(root: Path, split: str) -> tuple[Path, Path, Path]:
    return root / f"{split}_frames.npy", root / f"{split}_offsets.npy", root / f"{split}_caps.txt"


def _check_offsets(offsets: np.ndarray, num_frames: int, path: Path, frames_path: Path) -> np.ndarray:
    """Validate an offsets array and return it as an in-memory int64 array."""
    if offsets.ndim != 1 or offsets.shape[0] < 2:
        raise DataError(f"{path}: expected N+1 offsets (a 1-D array of at least 2 integers), got shape {offsets.shape}")
    if offsets.dtype.kind not in "iu":
        raise DataError(f"{path}: expected integer offsets, got dtype {offsets.dtype}")
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets[0] != 0:
        raise DataError(f"{path}: expected offsets[0] = 0, got {int(offsets[0])}")
    steps = np.diff(offsets)
    if (steps <= 0).any():
        v = int(np.argmax(steps <= 0))
        raise DataError(
            f"{path}: offsets must be strictly increasing (every video has at least one frame); "
            f"video {v} spans offsets {int(offsets[v])}..{int(offsets[v + 1])}"
        )
    if offsets[-1] != num_frames:
        raise DataError(
            f"{path}: the last offset ({int(offsets[-1])}) must equal the number of frames in {frames_path.name} "
            f"({num_frames})"
        )
    return offsets


class FrameFeatureDataset(ListedCaptionDataset):
    """Videos as variable-length sets of frame features, in the frames layout (see the module docstring).

    The frame array is memory-mapped; :meth:`image` copies one video's frames and converts them to
    float32 (float16 files are fine). Offsets and captions are read and checked at construction.

    Args:
        root: the folder holding ``{split}_frames.npy``, ``{split}_offsets.npy`` and ``{split}_caps.txt``.
        split: the split name (file prefix), e.g. ``train``, ``val``, ``test``.
        captions_per_image: captions per video ``k``; inferred from the counts when ``None``.
        max_images: keep only the first ``max_images`` videos and their captions.

    Raises:
        DataError: naming the file, if a file is missing or malformed, the offsets are not strictly
            increasing from 0 to the number of frames, or the caption count is not ``videos × k``.

    Example:
        >>> ds = FrameFeatureDataset("data/msrvtt", "test", captions_per_image=20)  # doctest: +SKIP
        >>> ds.image(0).shape                                                      # doctest: +SKIP
        (28, 2048)
    """

    mapped_arrays = ("_frames",)

    image_kind = "features"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        captions_per_image: int | None = None,
        max_images: int | None = None,
    ) -> None:
        root = check_split_folder(root, "frame-feature folder", captions_per_image, max_images)
        self.root = root
        self.split = split
        self.frames_path, self.offsets_path, self.caps_path = _frame_paths(root, split)
        frames = self._load_frames()
        offsets = _check_offsets(
            open_npy(self.offsets_path, "video offsets into the frames"), frames.shape[0], self.offsets_path,
            self.frames_path,
        )
        captions = read_lines(self.caps_path)
        videos, lines = offsets.shape[0] - 1, len(captions)
        k = captions_per_image
        if k is None:
            if lines == 0 or lines % videos:
                raise DataError(f"{self.caps_path}: expected a positive multiple of {videos} captions "
                                f"({videos} videos in {self.offsets_path.name}), got {lines}")
            k = lines // videos
        elif lines != videos * k:
            raise DataError(
                f"{self.caps_path}: expected {videos} videos x {k} captions = {videos * k} lines "
                f"({videos} videos in {self.offsets_path.name}), got {lines}"
            )
        num_images = videos if max_images is None else min(videos, max_images)
        self._frames = frames
        self._offsets = offsets
        self._captions = captions[: num_images * k]
        self.num_images = num_images
        self.captions_per_image = k
        self.feature_dim = int(frames.shape[1])

    def _load_frames(self) -> np.ndarray:
        frames = open_npy(self.frames_path, "all frame features, videos concatenated")
        if frames.ndim != 2:
            raise DataError(f"{self.frames_path}: expected a 2-D (total frames, dim) array, got shape {frames.shape}")
        if not np.issubdtype(frames.dtype, np.floating):
            raise DataError(f"{self.frames_path}: expected floating-point features, got dtype {frames.dtype}")
        if frames.shape[0] == 0 or frames.shape[1] == 0:
            raise DataError(f"{self.frames_path}: expected a non-empty array, got shape {frames.shape}")
        return frames

    @property
    def frames(self) -> np.ndarray:
        """The memory-mapped ``(T_total, D)`` frame array as stored (all videos, original dtype)."""
        return self._frames

    def num_frames(self) -> np.ndarray:
        """Return the number of frames ``T_i`` of every video as an int64 array."""
        return np.diff(self._offsets)[: self.num_images]

    def image(self, i: int) -> np.ndarray:
        """Return a float32 copy of the frames of video ``i``, shape ``(T_i, D)``."""
        if not 0 <= i < self.num_images:
            raise IndexError(f"video index {i} out of range for {self.num_images} videos")
        frames = np.array(self._frames[self._offsets[i] : self._offsets[i + 1]], dtype=np.float32)
        return check_finite_rows(frames, str(self.frames_path), np.arange(self._offsets[i], self._offsets[i + 1]))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._frames = self._load_frames()


def write_frames(
    root: str | os.PathLike,
    split: str,
    videos: Sequence[np.ndarray],
    captions: Sequence[str],
    k: int,
) -> tuple[Path, Path, Path]:
    """Write one split in the frames layout, each file atomically.

    The frames are streamed to disk one video at a time (no concatenated copy in memory). They keep a
    float16 dtype if every video is float16, and are stored as float32 otherwise.

    Args:
        root: destination folder (created if needed).
        split: split name (file prefix).
        videos: one ``(T_i, D)`` floating-point array per video, ``T_i >= 1``, the same ``D`` for all.
        captions: ``len(videos) * k`` captions, the ``k`` captions of each video consecutive.
        k: captions per video.

    Returns:
        The paths of ``{split}_frames.npy``, ``{split}_offsets.npy`` and ``{split}_caps.txt``.

    Raises:
        DataError: if a video is not a non-empty 2-D float array, the dimensions differ, the caption count
            is not ``len(videos) * k`` or a caption contains a line break.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"k: expected a positive number of captions per video, got {k!r}")
    videos = [np.asarray(v) for v in videos]
    if not videos:
        raise DataError("videos: expected at least one video")
    dims = set()
    for i, v in enumerate(videos):
        if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
            raise DataError(f"videos[{i}]: expected a (T, D) array with T >= 1 frames, got shape {v.shape}")
        if not np.issubdtype(v.dtype, np.floating):
            raise DataError(f"videos[{i}]: expected floating-point frame features, got dtype {v.dtype}")
        dims.add(v.shape[1])
    if len(dims) > 1:
        raise DataError(f"videos: expected one feature dimension for all frames, got {sorted(dims)}")
    captions = [str(c).strip() for c in captions]
    if len(captions) != len(videos) * k:
        raise DataError(
            f"captions: expected {len(videos)} videos x {k} = {len(videos) * k} captions, got {len(captions)}"
        )
    for j, c in enumerate(captions):
        if "\n" in c or "\r" in c:
            raise DataError(f"captions[{j}]: a caption cannot contain a line break")
    dtype = np.dtype(np.float16) if all(v.dtype == np.float16 for v in videos) else np.dtype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([v.shape[0] for v in videos])]).astype(np.int64)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": (int(offsets[-1]), dims.pop())}

    def write_npy(f: Any) -> None:
        np.lib.format.write_array_header_1_0(f, header)
        for v in videos:
            f.write(np.ascontiguousarray(v, dtype=dtype).tobytes())

    root = Path(root)
    frames_path, offsets_path, caps_path = _frame_paths(root, split)
    atomic_write(frames_path, write_npy)
    atomic_write(offsets_path, lambda f: np.save(f, offsets, allow_pickle=False))
    atomic_write_text("\n".join(captions) + "\n", caps_path)
    return frames_path, offsets_path, caps_path


# ------------------------------------------------------------------------------------- generated


@dataclass
class SyntheticVideoConfig:
    """Settings of :func:`make_synthetic_video` (``data.synthetic`` overrides for ``data.kind='synthetic_video'``).

    The world (category, colour, size and background vectors) and the captions are those of
    :mod:`vsekit.data.synthetic`, with the same field meanings.

    Attributes:
        num_train: number of train videos.
        num_val: number of validation videos.
        num_test: number of test videos.
        captions_per_image: captions per video (``data.captions_per_image`` when not given).
        feature_dim: frame feature dimension.
        min_frames: fewest frames in a video.
        max_frames: most frames in a video.
        min_objects: fewest objects in a video.
        max_objects: most objects in a video.
        min_visible: shortest on-screen stretch of an object, as a fraction of the video's frames.
        max_visible: longest on-screen stretch of an object, as a fraction of the video's frames.
        num_categories: object categories used.
        num_colors: colours used.
        num_clutter_types: background types (one per video).
        background_scale: norm of the background vector relative to a category vector.
        min_mentions: fewest objects a caption describes.
        max_mentions: most objects a caption describes.
        p_color: probability that a caption gives an object's colour.
        p_size: probability that a caption gives an object's size.
        attribute_scale: norm of a colour or size vector relative to a category vector.
        noise: per-frame Gaussian noise norm.
        scene_offset: norm of the random offset shared by all frames of a video.
        seed: seed of the world and of every split.
    """

    num_train: int = 2000
    num_val: int = 300
    num_test: int = 300
    captions_per_image: int = 10
    feature_dim: int = 64
    min_frames: int = 8
    max_frames: int = 40
    min_objects: int = 3
    max_objects: int = 8
    min_visible: float = 0.15
    max_visible: float = 0.5
    num_categories: int = 24
    num_colors: int = 8
    num_clutter_types: int = 8
    background_scale: float = 0.5
    min_mentions: int = 2
    max_mentions: int = 3
    p_color: float = 0.9
    p_size: float = 0.4
    attribute_scale: float = 0.8
    noise: float = 0.3
    scene_offset: float = 0.5
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`~vsekit.errors.ConfigError` naming the first invalid field."""
        shared = {f.name for f in dataclasses.fields(SyntheticConfig)} & {f.name for f in dataclasses.fields(self)}
        SyntheticConfig(**{name: getattr(self, name) for name in shared}).validate()  # the fields they share
        for name in ("min_frames", "max_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"synthetic.{name}: expected a positive integer, got {value!r}")
        if self.max_frames < self.min_frames:
            raise ConfigError(f"synthetic.max_frames: expected >= min_frames={self.min_frames}, got {self.max_frames}")
        for name in ("min_visible", "max_visible"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ConfigError(f"synthetic.{name}: expected a fraction of the frames in (0, 1], got {value!r}")
        if self.max_visible < self.min_visible:
            raise ConfigError(f"synthetic.max_visible: expected >= min_visible={self.min_visible}, "
                              f"got {self.max_visible}")
        if isinstance(self.background_scale, bool) or not self.background_scale >= 0.0:
            raise ConfigError(f"synthetic.background_scale: expected a non-negative number, got {self.background_scale!r}")


def _make_video_split(
    cfg: SyntheticVideoConfig, world: World, num_videos: int, seq: np.random.SeedSequence
) -> FeatureCaptionDataset:
    feat_seq, text_seq = seq.spawn(2)
    rng = np.random.default_rng(feat_seq)
    text_rng = random.Random(int(text_seq.generate_state(1)[0]))
    d = cfg.feature_dim
    videos, captions = [], []
    for _ in range(num_videos):
        t = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        cats = rng.integers(0, cfg.num_categories, size=n)
        colors = rng.integers(0, cfg.num_colors, size=n)
        sizes = rng.integers(0, len(SIZES), size=n)
        objects = world.category[cats] + world.color[colors] + world.size[sizes]  # (n, d)
        # one contiguous on-screen stretch per object
        length = np.clip(np.rint(t * rng.uniform(cfg.min_visible, cfg.max_visible, size=n)), 1, t).astype(np.int64)
        start = (rng.random(n) * (t - length + 1)).astype(np.int64)
        steps = np.arange(t)[:, None]
        visible = (steps >= start[None, :]) & (steps < (start + length)[None, :])  # (t, n)
        count = visible.sum(axis=1, keepdims=True)
        frames = (visible @ objects) / np.sqrt(np.maximum(count, 1))
        frames += cfg.background_scale * world.clutter[rng.integers(0, cfg.num_clutter_types)]
        frames += rng.standard_normal(d) * (cfg.scene_offset / np.sqrt(d))
        frames += rng.standard_normal((t, d)) * (cfg.noise / np.sqrt(d))
        videos.append(frames.astype(np.float32))
        for _ in range(cfg.captions_per_image):
            captions.append(describe_scene(text_rng, cfg, cats, colors, sizes))
    return FeatureCaptionDataset(videos, captions, cfg.captions_per_image)


_SPLITS = ("train", "val", "test")


def make_synthetic_video(
    config: SyntheticVideoConfig | None = None, **overrides: Any
) -> dict[str, FeatureCaptionDataset]:
    """Make the generated ``train``, ``val`` and ``test`` video datasets (deterministic per seed).

    Every split has its own seed derived from ``seed``, so a split does not change when the size of
    another one does.

    Args:
        config: settings (defaults if None).
        **overrides: fields of :class:`SyntheticVideoConfig` to replace, e.g. ``num_train=500``.

    Returns:
        ``{"train": ..., "val": ..., "test": ...}`` datasets whose images are ``(T_i, feature_dim)`` frame
        sets with ``min_frames <= T_i <= max_frames``. A split with 0 videos is left out.

    Raises:
        ConfigError: if a field is unknown or invalid.
    """
    cfg = config if config is not None else SyntheticVideoConfig()
    check_options(SyntheticVideoConfig, overrides, "synthetic", " for generated videos")
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    world_seq, *split_seqs = np.random.SeedSequence(cfg.seed).spawn(1 + len(_SPLITS))
    world = make_world(cfg, world_seq)  # type: ignore[arg-type]  # uses the fields both configs share
    sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
    return {
        name: _make_video_split(cfg, world, sizes[name], seq)
        for name, seq in zip(_SPLITS, split_seqs, strict=True)
        if sizes[name] > 0
    }


def synthetic_video_split(options: dict[str, Any], split: str, captions_per_image: int) -> FeatureCaptionDataset:
    """One split of the generated videos, as ``data.kind='synthetic_video'`` builds it.

    Args:
        options: ``data.synthetic``: overrides of :class:`SyntheticVideoConfig`.
        split: ``train``, ``val`` or ``test``.
        captions_per_image: ``data.captions_per_image``, used unless ``options`` sets it.

    Returns:
        The dataset of that split (only that split is generated).

    Raises:
        ConfigError: if an option or the split name is unknown, or the split is empty.
    """
    return generate_split(make_synthetic_video, SyntheticVideoConfig, options, split, captions_per_image,
                          " for data.kind='synthetic_video'")  # fmt: skip
