"""The readers of each kind of source (see :mod:`vsekit.index.collection`): a folder of images, a Karpathy
JSON (of image files, or of the features ``vsekit extract`` wrote for it), a CSV / JSONL table, and a
precomputed-features folder. Each one fills a :class:`~vsekit.index.items.CollectionBuilder`.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from vsekit.errors import DataError
from vsekit.index.items import Collection, CollectionBuilder, FeatureRows, ImageItem

__all__ = ["IMAGE_EXTENSIONS", "read_folder", "read_karpathy", "read_precomp", "read_table"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File extensions (lower case) that a ``folder`` source collects."""


def read_folder(source: Path) -> Collection:
    source = source.resolve()
    b = CollectionBuilder(source, "folder", source)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            rel = b.relative((base / name).relative_to(source).as_posix(), source)
            if rel is not None:
                found.append(rel)
    for rel in sorted(found):
        b.add_image_file(rel)
    return b.col


def _feature_split(folder: Path, name: str, rows_per_image: int, views: tuple[str, ...]) -> FeatureRows:
    from vsekit.data.factory import open_feature_views

    rows = FeatureRows(folder / f"{name}_ims.npy", rows_per_image)
    rows.views = open_feature_views(folder, name, list(views), rows.rows.shape, "views")
    return rows


def _feature_stamp(name: str, rows: FeatureRows) -> str:
    """What changes when a split's feature file or one of its view files is written again (sizes, times);
    a row's key is ``{split}/{row}`` + this."""
    st = rows.ims_path.stat()
    stamp = f"\0{st.st_size}\0{st.st_mtime_ns}"
    for view in rows.views:
        vst = (rows.ims_path.parent / f"{name}_ims.{view}.npy").stat()
        stamp += f"\0{view}:{vst.st_size}:{vst.st_mtime_ns}"
    return stamp


def _read_karpathy_features(source: Path, root: Path, split: str | None, features: Path, views: tuple[str, ...]) -> Collection:
    from vsekit.data.datasets import KarpathyJSON

    if not features.is_dir():
        raise DataError(f"features: folder not found: {features}")
    data = KarpathyJSON(source)
    if split:
        names = split.split("+")
    else:
        names = [s for s in data.splits() if (features / f"{s}_ims.npy").is_file()]
        if not names:
            raise DataError(f"{features}: no {{split}}_ims.npy file for any split of {source.name} (see 'vsekit extract')")
    b = CollectionBuilder(root, "karpathy", source)
    b.col.views = views
    for name in names:
        records = data.records([name])
        rows = _feature_split(features, name, 1, views)
        if rows.num_images != len(records):
            raise DataError(
                f"{rows.ims_path}: {rows.num_images} feature rows for the {len(records)} {name!r} images of "
                f"{source.name} (expected one row per image, in the JSON's order)"
            )
        b.col.features[name] = rows
        st, stamp = rows.ims_path.stat(), _feature_stamp(name, rows)
        for i, r in enumerate(records):
            rel = PurePosixPath(r.filepath, r.filename).as_posix()
            inside = not PurePosixPath(rel).is_absolute() and ".." not in PurePosixPath(rel).parts
            path = rel if inside and (root / rel).is_file() else None  # the picture, shown with results
            if b.has_image(rel):
                raise DataError(f"{source}: image {rel} is listed twice")
            b.add_feature_image(
                ImageItem(id=rel, key=f"{name}/{i}{stamp}", path=path, size=int(st.st_size),
                          mtime=int(st.st_mtime_ns), feature=(name, i))
            )  # fmt: skip
            for c in r.captions:
                b.add_text(c, rel)
    return b.col


def read_karpathy(
    source: Path, image_root: Path | None, split: str | None, features: Path | None = None, views: tuple[str, ...] = ()
) -> Collection:
    from vsekit.data.datasets import KarpathyJSON

    root = (image_root if image_root is not None else source.parent).resolve()
    if features is not None:
        return _read_karpathy_features(source, root, split, features, views)
    data = KarpathyJSON(source)
    if not root.is_dir():
        raise DataError(f"image_root: folder not found: {root}")
    b = CollectionBuilder(root, "karpathy", source)
    records = data.records(split.split("+")) if split else data.records(list(data.splits()))
    for r in records:
        rel = b.relative(str(PurePosixPath(r.filepath) / r.filename), root)
        image_id = b.add_image_file(rel) if rel is not None else None
        if image_id is None:
            continue
        for c in r.captions:
            b.add_text(c, image_id)
    return b.col


def _rows_csv(source: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        with open(source, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if not {"path", "caption"} & set(fields):
                raise DataError(f"{source}: expected a header row with a 'path' and/or a 'caption' column, got {fields}")
            reader.fieldnames = fields
            return [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise DataError(f"{source}: expected UTF-8 text") from None
    except csv.Error as e:
        raise DataError(f"{source}: malformed CSV ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {source}: {e.strerror}") from None


def _rows_jsonl(source: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        lines = source.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{source}: expected UTF-8 text") from None
    except OSError as e:
        raise DataError(f"cannot read {source}: {e.strerror}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}: line {n}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{source}: line {n}: expected a JSON object with 'path' and/or 'caption'")
        rows.append((n, row))
    return rows


def read_table(source: Path, kind: str) -> Collection:
    rows = _rows_csv(source) if kind == "csv" else _rows_jsonl(source)
    base = source.parent.resolve()
    b = CollectionBuilder(base, kind, source)
    for n, row in rows:
        path = row.get("path")
        captions: Any = row.get("caption", row.get("captions"))
        if path is not None and not isinstance(path, str):
            raise DataError(f"{source}: line {n}: 'path' must be a string, got {type(path).__name__}")
        if captions is None or isinstance(captions, str):
            captions = [] if captions is None else [captions]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise DataError(f"{source}: line {n}: 'caption' must be a string or a list of strings")
        path = (path or "").strip()
        if not path and not any(c.strip() for c in captions):
            raise DataError(f"{source}: line {n}: expected a 'path' or a 'caption'")
        image_id = None
        if path:
            rel = b.relative(path, base)
            image_id = b.add_image_file(rel) if rel is not None else None
            if image_id is None:
                continue  # the row's captions describe an image that is not there: leave them out too
        for c in captions:
            b.add_text(c, image_id)
    return b.col


def read_precomp(source: Path, split: str | None, views: tuple[str, ...] = ()) -> Collection:
    from vsekit.data.datasets import PrecompDataset

    root = source.resolve()
    b = CollectionBuilder(root, "precomp", source)
    b.col.views = views
    names = split.split("+") if split else sorted(p.name[: -len("_ims.npy")] for p in root.glob("*_ims.npy"))
    if not names:
        raise DataError(f"{root}: no {{split}}_ims.npy file (expected the precomputed-features layout)")
    for name in names:
        ds = PrecompDataset(root, name)
        st = ds.ims_path.stat()
        b.col.features[name] = _feature_split(root, name, ds.rows_per_image, views)
        stamp = _feature_stamp(name, b.col.features[name])
        for i in range(ds.num_images):
            image_id = f"{name}/{i}"
            key = f"{image_id}{stamp}"
            b.add_feature_image(
                ImageItem(id=image_id, key=key, path=None, size=int(st.st_size), mtime=int(st.st_mtime_ns), feature=(name, i))
            )
            for j in range(i * ds.captions_per_image, (i + 1) * ds.captions_per_image):
                b.add_text(ds.caption(j), image_id)
    return b.col
