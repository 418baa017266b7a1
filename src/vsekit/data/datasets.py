"""The dataset contract and the datasets of precomputed image features.

Every dataset is a map-style dataset indexed by *caption*: image ``i`` has the ``k`` consecutive captions
``i*k .. i*k+k-1`` (``k = captions_per_image``, fixed per dataset), so caption ``j`` belongs to image
``j // k``. An image is a set of ``K_i`` feature vectors of dimension ``D`` (regions or grid cells); ``K_i``
may differ between images.
"""

from __future__ import annotations

import mmap as mmap_module
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vsekit.data.files import (
    check_finite_rows,
    check_float_features,
    check_optional_count,
    check_split_folder,
    load_features_npy,
    read_lines,
)
from vsekit.data.karpathy import ImageRecord, KarpathyJSON, captions_from_records
from vsekit.errors import DataError
from vsekit.io import atomic_write, atomic_write_text

# the Karpathy reader and the file helpers have their own modules; their names stay importable from here
__all__ = [
    "CaptionDataset",
    "FeatureCaptionDataset",
    "ImageRecord",
    "KarpathyJSON",
    "ListedCaptionDataset",
    "PrecompDataset",
    "captions_from_records",
    "check_float_features",
    "check_optional_count",
    "load_features_npy",
    "read_lines",
    "write_precomp",
]


class CaptionDataset(ABC):
    """Base class of all datasets: ``num_images`` images, each with ``captions_per_image`` captions.

    Subclasses set :attr:`num_images`, :attr:`captions_per_image` and :attr:`feature_dim` and implement
    :meth:`image` and :meth:`caption`.

    Attributes:
        num_images: number of images ``N``.
        captions_per_image: captions per image ``k``.
        feature_dim: feature dimension ``D``.
    """

    num_images: int
    captions_per_image: int
    feature_dim: int

    @abstractmethod
    def image(self, i: int) -> np.ndarray:
        """Return the feature set of image ``i`` as a float32 array of shape ``(K_i, D)``."""

    @abstractmethod
    def caption(self, j: int) -> str:
        """Return caption ``j`` (of image ``j // captions_per_image``)."""

    def __len__(self) -> int:
        """Number of captions, ``num_images * captions_per_image``."""
        return self.num_images * self.captions_per_image

    def __getitem__(self, j: int) -> dict[str, Any]:
        """Return caption ``j`` with its image.

        Args:
            j: caption index in ``[0, len(self))``; negative indices count from the end.

        Returns:
            ``{"image": float32 (K, D) array, "caption": str, "image_id": j // k, "caption_id": j}``.
        """
        n = len(self)
        j = int(j)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"caption index {j} out of range for a dataset of {n} captions")
        i = j // self.captions_per_image
        return {"image": self.image(i), "caption": self.caption(j), "image_id": i, "caption_id": j}

    def captions(self) -> list[str]:
        """Return all captions in order."""
        return [self.caption(j) for j in range(len(self))]

    def images(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Return the feature sets of several images, in the order given (repeats allowed).

        The default reads them one by one; datasets on disk override it with one batched read.
        """
        return [self.image(int(i)) for i in indices]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Return several items at once (what a ``DataLoader`` fetches per batch): the same dicts as
        ``[self[j] for j in indices]``, with the images read by one :meth:`images` call."""
        n, k = len(self), self.captions_per_image
        js = []
        for j in indices:
            j = int(j)
            j = j + n if j < 0 else j
            if not 0 <= j < n:
                raise IndexError(f"caption index {j} out of range for a dataset of {n} captions")
            js.append(j)
        arrays = self.images([j // k for j in js])
        return [
            {"image": a, "caption": self.caption(j), "image_id": j // k, "caption_id": j} for a, j in zip(arrays, js)
        ]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_images={self.num_images}, "
            f"captions_per_image={self.captions_per_image}, feature_dim={self.feature_dim})"
        )


class ListedCaptionDataset(CaptionDataset):
    """Base of the datasets that hold their captions as one list, ``self._captions`` (caption ``j`` of image
    ``j // captions_per_image``).

    Arrays named in :attr:`mapped_arrays` are memory-mapped files: pickling (a DataLoader worker started with
    "spawn") leaves them out, and the receiving process maps the file itself.
    """

    _captions: list[str]
    mapped_arrays: tuple[str, ...] = ()

    def caption(self, j: int) -> str:
        """Return caption ``j``."""
        return self._captions[j]

    def captions(self) -> list[str]:
        """Return all captions in order."""
        return list(self._captions)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self.mapped_arrays:
            state[name] = None
        return state


class FeatureCaptionDataset(ListedCaptionDataset):
    """A dataset from feature arrays (in memory or memory-mapped) and a list of captions.

    Args:
        features: a ``(N, K, D)`` array (possibly a ``np.memmap``), a ``(N, D)`` array (one vector per image,
            viewed as a set of one), or a list of ``N`` arrays of shape ``(K_i, D)``.
        captions: ``N * captions_per_image`` captions, those of image ``i`` at ``i*k .. i*k+k-1``.
        captions_per_image: ``k``.
        views: optional views, name -> an array shaped like ``features`` (the same images transformed, e.g.
            rotated). Evaluation averages each image's embeddings over the image and its views.
        draw_views: training augmentation: :meth:`image` returns the plain image or one of its views, drawn
            uniformly with the global torch RNG (so a resumed run draws the same), instead of the plain image.
        source: what the features were read from (a file), named when a read finds NaN or infinity.

    Raises:
        DataError: if the shapes or counts are inconsistent (and, when an image is read, if its features are
            not finite).
    """

    def __init__(
        self,
        features: np.ndarray | Sequence[np.ndarray],
        captions: Sequence[str],
        captions_per_image: int,
        views: dict[str, np.ndarray] | None = None,
        draw_views: bool = False,
        source: str = "features",
    ) -> None:
        if not isinstance(captions_per_image, int) or captions_per_image < 1:
            raise DataError(f"captions_per_image: expected a positive integer, got {captions_per_image!r}")
        if isinstance(features, np.ndarray):
            check_float_features(features, "features")
            if features.ndim == 2:
                features = features[:, None, :]
            if features.ndim != 3:
                raise DataError(f"features: expected a (N, K, D) or (N, D) array, got shape {features.shape}")
            if features.shape[1] < 1:
                raise DataError("features: expected at least one region per image, got K=0")
            num_images, dim = features.shape[0], features.shape[2]
        else:
            features = list(features)
            dims = set()
            for i, f in enumerate(features):
                if not isinstance(f, np.ndarray) or f.ndim != 2 or f.shape[0] < 1:
                    shape = getattr(f, "shape", type(f).__name__)
                    raise DataError(f"features[{i}]: expected a (K, D) array with K >= 1, got {shape}")
                check_float_features(f, f"features[{i}]")
                dims.add(f.shape[1])
            if len(dims) > 1:
                raise DataError(f"features: expected one feature dimension, got {sorted(dims)}")
            num_images, dim = len(features), (dims.pop() if dims else 0)
        if num_images == 0:
            raise DataError("features: expected at least one image")
        captions = [str(c) for c in captions]
        if len(captions) != num_images * captions_per_image:
            raise DataError(
                f"captions: expected {num_images} images x {captions_per_image} = "
                f"{num_images * captions_per_image} captions, got {len(captions)}"
            )
        self.views: dict[str, np.ndarray] = {}
        for name, arr in (views or {}).items():
            if not isinstance(features, np.ndarray) or not isinstance(arr, np.ndarray) or arr.shape != features.shape:
                got = getattr(arr, "shape", type(arr).__name__)
                raise DataError(f"views[{name!r}]: expected an array shaped like the features {getattr(features, 'shape', '')}, got {got}")
            check_float_features(arr, f"views[{name!r}]")
            self.views[name] = arr
        self.draw_views = draw_views and bool(self.views)
        self._features = features
        self.source = source  # named in errors about what is read (a file, or "features")
        self._captions = captions
        self.num_images = num_images
        self.captions_per_image = captions_per_image
        self.feature_dim = int(dim)

    def image(self, i: int) -> np.ndarray:
        """Return a float32 copy of the feature set of image ``i``, shape ``(K_i, D)`` (with ``draw_views``:
        of the image or one of its views, drawn at random)."""
        if self.draw_views:
            r = int(torch.randint(len(self.views) + 1, ()))
            if r:
                return self.view_image(list(self.views)[r - 1], i)
        return check_finite_rows(np.array(self._features[i], dtype=np.float32), self.source, i)

    def view_image(self, view: str, i: int) -> np.ndarray:
        """Return a float32 copy of image ``i``'s feature set in test-time view ``view``."""
        return check_finite_rows(np.array(self.views[view][i], dtype=np.float32), f"{self.source} ({view})", i)

    def num_regions(self) -> np.ndarray:
        """Return the number of regions ``K_i`` of every image as an int64 array."""
        if isinstance(self._features, np.ndarray):
            return np.full(self.num_images, self._features.shape[1], dtype=np.int64)
        return np.array([f.shape[0] for f in self._features], dtype=np.int64)


class PrecompDataset(ListedCaptionDataset):
    """Precomputed features in the SCAN / VSE++ / VSE∞ ``*_precomp`` layout.

    Files: ``{root}/{split}_ims.npy`` and ``{root}/{split}_caps.txt`` (one caption per line, the ``k``
    captions of an image on consecutive lines). The array is memory-mapped, never read whole: :meth:`image`
    copies one row and converts it to float32 (float16 files are fine).

    Two layouts are recognised, from the ``N`` rows of the array and the ``L`` caption lines:

    * one row per image (SCAN BUTD, ``N x 36 x 2048``): ``L = N * k``; ``k`` is ``L // N`` unless given;
    * one row per caption (the VSE++ ``10crop_precomp`` style): ``N == L``; the ``k`` rows of an image hold
      the same image, and image ``i`` uses row ``i * k``. ``k`` is ``captions_per_image`` (default 5). To
      read such files as one caption per image instead, pass ``captions_per_image=1``.

    A 2-D array ``(N, D)`` of global CNN vectors (VSE++) is read as sets of one vector (``K = 1``).

    Args:
        root: the folder, e.g. ``data/coco_precomp``.
        split: ``train``, ``dev``, ``test``, ``testall``, ...
        captions_per_image: ``k``; inferred if None (see above).
        max_images: keep only the first ``max_images`` images and their captions (e.g. 1000 for validation
            on the COCO dev split, as the official code does).

    Raises:
        DataError: if a file is missing or malformed, or the caption count does not fit the array.
    """

    mapped_arrays = ("_ims",)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        captions_per_image: int | None = None,
        max_images: int | None = None,
    ) -> None:
        root = check_split_folder(root, "precomputed-feature folder", captions_per_image, max_images)
        self.root = root
        self.split = split
        self.ims_path = root / f"{split}_ims.npy"
        self.caps_path = root / f"{split}_caps.txt"
        captions = read_lines(self.caps_path)
        if not captions:
            raise DataError(f"{self.caps_path}: expected one caption per line, the file is empty")
        arr = load_features_npy(self.ims_path)
        rows, lines = arr.shape[0], len(captions)
        k = captions_per_image
        if rows == lines and k != 1:
            k = 5 if k is None else k
            if lines % k:
                raise DataError(
                    f"{self.caps_path}: {lines} captions for {rows} feature rows (one row per caption) is not "
                    f"a multiple of captions_per_image={k} (pass captions_per_image=1 if every row is its own "
                    f"image)"
                )
            self.rows_per_image = k
        elif lines % rows == 0 and (k is None or lines == rows * k):
            k = lines // rows
            self.rows_per_image = 1
        else:
            expected = f"{rows} x {k} = {rows * k}" if k else f"a multiple of {rows}"
            raise DataError(
                f"{self.caps_path}: expected {expected} captions for the {rows} images of {self.ims_path}, "
                f"got {lines}"
            )
        num_images = lines // k
        if max_images is not None:
            num_images = min(num_images, max_images)
        self._ims: np.ndarray | None = arr
        self._ims_pid = os.getpid()
        self._captions = captions[: num_images * k]
        self.num_images = num_images
        self.captions_per_image = k
        self.feature_dim = int(arr.shape[-1])

    @property
    def features(self) -> np.ndarray:
        """The memory-mapped feature array as stored (all rows, original dtype).

        Mapped lazily once per process: a ``DataLoader`` worker maps the file itself instead of
        inheriting or unpickling the parent's mapping.
        """
        if self._ims is None or self._ims_pid != os.getpid():
            self._ims, self._ims_pid = load_features_npy(self.ims_path), os.getpid()
        return self._ims

    def image(self, i: int) -> np.ndarray:
        """Return a float32 copy of the features of image ``i``, shape ``(K, D)``."""
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {i} out of range for {self.num_images} images")
        ims = self.features
        row = ims[i * self.rows_per_image]
        out = np.array(row if ims.ndim == 3 else row[None, :], dtype=np.float32)
        _release_pages(ims, np.array([i * self.rows_per_image]))
        return check_finite_rows(out, str(self.ims_path), i * self.rows_per_image)

    def images(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Return the float32 feature sets of several images, in the order given (repeats allowed).

        One read for the whole batch: the distinct rows, in increasing file order, are copied out of
        the mapping with a single fancy index (sequential access on disk, each row read once), then
        converted to float32 and put back in the requested order. The mapped pages are then released
        from this process (they stay in the OS page cache), so the resident memory does not grow
        with the number of images read.

        Raises:
            IndexError: for an index outside ``[0, num_images)``.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return []
        bad = idx[(idx < 0) | (idx >= self.num_images)]
        if bad.size:
            raise IndexError(f"image index {int(bad[0])} out of range for {self.num_images} images")
        ims = self.features
        rows, order = np.unique(idx * self.rows_per_image, return_inverse=True)
        block = np.asarray(ims[rows], dtype=np.float32)  # one sorted fancy-index read, then float32
        _release_pages(ims, rows)
        check_finite_rows(block, str(self.ims_path), rows)
        if ims.ndim == 2:
            block = block[:, None, :]
        return [block[r] for r in order.reshape(-1)]


def _release_pages(array: np.ndarray, rows: np.ndarray) -> None:
    """Drop the pages of the given rows (sorted) of a memory-mapped array from this process.

    ``madvise(MADV_DONTNEED)`` on a read-only file mapping unmaps the pages from the process only
    (the data stays in the page cache; a later read maps it again), so the resident set of a process
    that reads a large feature file piece by piece stays at the size of one batch. A no-op for
    arrays that are not memory-mapped or where ``madvise`` is unavailable.
    """
    mapping = getattr(array, "_mmap", None)
    if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap_module, "MADV_DONTNEED"):
        return
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
    base = int(getattr(array, "offset", 0)) % mmap_module.ALLOCATIONGRANULARITY  # numpy maps from an aligned start
    page = mmap_module.PAGESIZE
    size = len(mapping)
    runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)  # consecutive rows: one range
    for run in runs:
        start = base + int(run[0]) * row_bytes
        stop = min(size, base + (int(run[-1]) + 1) * row_bytes)
        aligned = start - start % page
        try:
            mapping.madvise(mmap_module.MADV_DONTNEED, aligned, stop - aligned)
        except (OSError, ValueError):  # pragma: no cover - unusual mappings
            return


def write_precomp(
    root: str | os.PathLike,
    split: str,
    features: np.ndarray,
    captions: Sequence[str],
) -> tuple[Path, Path]:
    """Write ``{root}/{split}_ims.npy`` and ``{root}/{split}_caps.txt`` (the SCAN layout), atomically.

    Args:
        root: destination folder (created if needed).
        split: split name.
        features: ``(N, K, D)`` or ``(N, D)`` floating-point array, one row per image.
        captions: ``N * k`` captions, the ``k`` captions of each image consecutive.

    Returns:
        The paths of the ``.npy`` and the captions file.

    Raises:
        DataError: if the counts do not fit or a caption contains a line break.
    """
    features = np.asarray(features)
    check_float_features(features, "features")
    if features.ndim not in (2, 3) or features.shape[0] == 0:
        raise DataError(f"features: expected a non-empty (N, K, D) or (N, D) array, got shape {features.shape}")
    captions = [str(c).strip() for c in captions]
    if not captions or len(captions) % features.shape[0]:
        raise DataError(
            f"captions: expected a positive multiple of {features.shape[0]} captions, got {len(captions)}"
        )
    for j, c in enumerate(captions):
        if "\n" in c or "\r" in c:
            raise DataError(f"captions[{j}]: a caption cannot contain a line break")
    root = Path(root)
    ims_path = atomic_write(root / f"{split}_ims.npy", lambda f: np.save(f, features, allow_pickle=False))
    caps_path = atomic_write_text("\n".join(captions) + "\n", root / f"{split}_caps.txt")
    return ims_path, caps_path
