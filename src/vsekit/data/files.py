"""Reading the files of feature datasets: caption text files and memory-mapped ``.npy`` feature arrays,
with the checks every reader shares (one line naming the file or field)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vsekit.errors import DataError, first_line


def check_optional_count(value: Any, field: str) -> None:
    """Raise a :class:`DataError` naming ``field`` unless ``value`` is None or a positive integer (not a bool)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(f"{field}: expected a positive integer, got {value!r}")


def check_split_folder(root: str | os.PathLike, what: str, captions_per_image: Any, max_images: Any) -> Path:
    """The folder of a split-per-file dataset (``what``: e.g. "precomputed-feature folder") and its two counts, checked."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{what} not found: {root}")
    check_optional_count(captions_per_image, "captions_per_image")
    check_optional_count(max_images, "max_images")
    return root


def check_finite_rows(block: np.ndarray, where: str, rows: Any) -> np.ndarray:
    """``block`` (features read from ``where``: one K×D set, or a batch of them) as it is, or a :class:`DataError`
    naming the file and the first ``rows`` entry that holds NaN or infinity. Checked at every read, so the cost
    follows what a run reads, not the size of the file."""
    finite = np.isfinite(block)
    if finite.all():
        return block
    first = int(np.argmin(finite.reshape(len(block), -1).all(axis=1))) if np.ndim(rows) else 0
    row = int(np.asarray(rows).reshape(-1)[first]) if np.ndim(rows) else int(rows)
    raise DataError(f"{where}: row {row}: non-finite feature values (NaN or infinity)")


def check_float_features(arr: np.ndarray, where: str) -> None:
    """Raise a :class:`DataError` naming ``where`` unless ``arr`` holds floating-point values."""
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{where}: expected floating-point features, got dtype {arr.dtype}")


def read_lines(path: Path) -> list[str]:
    """Read a UTF-8 text file as a list of stripped lines, without trailing blank lines."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: expected UTF-8 text") from None
    lines = [line.strip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def open_npy(path: str | Path, what: str = "") -> np.ndarray:
    """Memory-map one ``.npy`` array (read-only, no pickles): the one place vsekit opens a user's arrays.

    Args:
        path: the file.
        what: what the file holds, for the message when it is missing (e.g. ``"video frames"``).

    Raises:
        DataError: one line naming the file when it is missing, damaged, truncated or not a single array.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}" + (f" ({what})" if what else ""))
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - a damaged header fails in many ways (ValueError, tokenize.TokenError, ...)
        raise DataError(f"{path}: not a readable .npy array ({first_line(e)})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected a single .npy array")
    return arr


def load_features_npy(path: Path) -> np.ndarray:
    """Memory-map an ``.npy`` file of floating-point features, shape ``(N, K, D)`` or ``(N, D)``."""
    arr = open_npy(path)
    if arr.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 3-D (images, regions, dim) or 2-D (images, dim) array, "
                        f"got shape {arr.shape}")
    check_float_features(arr, str(path))
    if arr.shape[0] == 0 or arr.shape[-1] == 0 or (arr.ndim == 3 and arr.shape[1] == 0):
        raise DataError(f"{path}: expected a non-empty array, got shape {arr.shape}")
    return arr


FEATURES_META = "features.json"
"""The metadata file that ``vsekit extract`` writes beside the features it extracts."""
FEATURES_FORMAT = "vsekit-features-1"
EXTRACTOR_KEYS = ("format", "backbone", "image_size", "dtype", "preprocessing")
"""What makes features reproducible: the entries of ``features.json`` that a model records as its extractor."""


def read_extractor_settings(folder: str | Path | None) -> dict[str, Any] | None:
    """The extractor settings (:data:`EXTRACTOR_KEYS`) of a ``vsekit extract`` folder's ``features.json``; None when
    ``folder`` is None or holds no readable vsekit feature metadata (features from elsewhere)."""
    if folder is None or not (Path(folder) / FEATURES_META).is_file():
        return None
    try:
        meta = json.loads((Path(folder) / FEATURES_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FEATURES_FORMAT:
        return None
    return {k: meta.get(k) for k in EXTRACTOR_KEYS}
