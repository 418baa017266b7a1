"""Feature extraction: run an image backbone once over a dataset's images and store the grids.

The output folder is the precomputed-feature layout that training and evaluation read
(``data.kind=karpathy`` with ``data.features=<folder>``)::

    {split}_ims.npy          N×(h·w)×C float16 (memory-mappable), rows in the JSON's image order of that split
    {split}_ims.{view}.npy   with ``views``: the same rows for a transformed copy of every image (``rot90``,
                             ``rot180``, ``rot270``, ``hflip``, ``vflip``, ``transpose``, ``antitranspose``), for test-time view averaging
                             (``data.eval_views``)
    features.json            backbone, preprocessing, grid shape, dtype, and per split the image file names

Extraction is resumable: rows are written into ``{split}_ims.npy.partial`` and the number of finished
images into ``{split}.progress.json`` (atomically, after the rows are flushed); a killed run continues
where it stopped, and the final file appears (atomic rename) only when the split is complete.

:class:`FeatureExtractor` (:mod:`vsekit.backbones.extractor`, re-exported here) computes the same features for
any image; a model trained on features, and a search index of one, embed photos with it.

>>> from vsekit.extract import extract_features
>>> extract_features("data/rsicd/dataset_rsicd.json", "data/rsicd/images", "features/rsicd_lite0")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np
import torch

from .backbones.extractor import FeatureExtractor
from .data.files import FEATURES_FORMAT, FEATURES_META
from .data.views import check_views, view_file
from .errors import ConfigError, DataError
from .io import atomic_write_json, exclusive_folder, remove_stale_temporaries
from .progress import Progress

META = FEATURES_META
SAVE_EVERY = 5.0
"""Seconds between progress saves (rows flushed, then the count of finished images): a killed
extraction loses at most this much work."""
FORMAT = FEATURES_FORMAT

def _image_path(root: Path, record: Any) -> Path:
    return root / record.filepath / record.filename if record.filepath else root / record.filename


@torch.inference_mode()
def extract_features(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    splits: Sequence[str] = ("train", "val", "test"),
    backbone: str = "efficientnet_lite0",
    image_size: int = 224,
    batch_size: int = 16,
    dtype: str = "float16",
    device: str = "auto",
    workers: int = 4,
    progress_stream: TextIO | None = sys.stderr,
    max_images: int | None = None,
    views: Sequence[str] = (),
    save_every: float = SAVE_EVERY,
) -> dict[str, Any]:
    """Extract backbone grid features for the images of a Karpathy-style JSON.

    Args:
        annotations: the Karpathy-style JSON (``dataset_rsicd.json``, ``dataset_coco.json``, ...).
        images: the folder holding the images (``filepath/filename`` of each record).
        out_dir: output folder (created); an interrupted extraction there is resumed.
        splits: splits to extract (``"train+restval"`` joins splits in one file; when its parts, and their
            views, are already extracted in ``out_dir``, the joined file is assembled from their rows without a
            backbone pass: ``["train", "val", "test", "train+val"]`` costs one pass per image).
        backbone: a :func:`vsekit.backbones.list_backbones` name (pretrained weights).
        image_size: side of the square network input.
        batch_size: images per forward pass.
        dtype: ``float16`` (half the disk and memory) or ``float32``.
        device: ``auto``, ``cpu``, ``cuda``, ...
        workers: threads decoding images.
        progress_stream: where the progress bar goes (``None``: silent).
        max_images: stop after this many images per split (for a quick look; the split stays partial).
        views: also extract these :data:`VIEWS` of every image of each split (``{split}_ims.{view}.npy``), once
            the split itself is complete; recorded under the split's ``views`` in ``features.json``.
        save_every: seconds between progress saves (0: after every batch); a killed extraction loses at most
            this much work.

    Returns:
        The metadata written to ``features.json`` plus ``timing`` (seconds and images/s per split, and per
        ``{split}.{view}``).
    """
    from .data.karpathy import KarpathyJSON

    image_root = _check_arguments(images, batch_size, save_every, views)
    data = KarpathyJSON(annotations)
    extractor = FeatureExtractor(backbone, image_size, dtype, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_folder(out, "out"):  # one extraction at a time in a folder
        # a run killed while writing features.json or a progress file left its temporary beside it
        progress = [f"{split}{'' if v is None else '.' + v}.progress.json" for split in splits for v in (None, *views)]
        remove_stale_temporaries(out, [META, *progress])
        meta = _read_meta(out / META, extractor.settings)
        job = _SplitExtraction(extractor, image_root, out, batch_size, workers, max_images, progress_stream, save_every)
        timing = _extract_splits(job, data, meta, splits, views)
        return {**meta, "timing": timing}


def _extract_splits(job: _SplitExtraction, data: Any, meta: dict[str, Any], splits: Sequence[str],
                    views: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """Extract each split, then its views, that ``meta`` (features.json, updated and written after each) does not
    list as done; returns the timing of each ``split`` / ``split.view``."""
    out, image_root, meta_path = job.out, job.image_root, job.out / META
    timing: dict[str, Any] = {}
    for split in splits:
        records = data.records(split.split("+"))
        for view in (None, *views):
            if view is not None and split not in meta["splits"]:
                break  # the views of a split follow the split itself
            done_entry = meta["splits"].get(split) if view is None else meta["splits"][split].get("views", {}).get(view)
            key = split if view is None else f"{split}.{view}"
            if (out / view_file(split, view)).is_file() and done_entry:
                timing[key] = {"images": len(records), "seconds": 0.0, "skipped": "already extracted",
                               "recorded_seconds": done_entry.get("extract_seconds")}  # fmt: skip
                continue
            joined = join_extracted_parts(out, meta, split, records, image_root, view)
            entry, timing[key] = joined if joined is not None else job.run(split, records, view)
            if entry is not None:
                if view is None:
                    meta["splits"][split] = entry
                else:
                    entry.pop("files")  # the split's own list
                    meta["splits"][split].setdefault("views", {})[view] = entry
                atomic_write_json(meta, meta_path)
    return timing


def join_extracted_parts(out: Path, meta: dict[str, Any], split: str, records: list, image_root: Path,
                         view: str | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Write a joined split (``train+val``) from the rows of its parts when every part (and ``view``) is already
    extracted in ``out`` with the same files: no backbone pass. Returns its entry and timing, or None."""
    parts = split.split("+")
    if len(parts) < 2:
        return None
    entries = [meta["splits"].get(p) for p in parts]
    if not all(entries) or not all(out.joinpath(view_file(p, view)).is_file() for p in parts):
        return None
    if view is not None and not all(view in e.get("views", {}) for e in entries):
        return None
    where = {f: (i, row) for i, e in enumerate(entries) for row, f in enumerate(e["files"])}
    files = [str(_image_path(image_root, r).relative_to(image_root)) for r in records]
    if any(f not in where for f in files):
        return None  # the parts hold other images than the joined split: extract it
    t0 = time.perf_counter()
    sources = [np.load(out / view_file(p, view), mmap_mode="r") for p in parts]
    final = out / view_file(split, view)
    partial = final.with_name(final.name + ".partial")
    arr = np.lib.format.open_memmap(partial, mode="w+", dtype=sources[0].dtype, shape=(len(files), *sources[0].shape[1:]))
    for i, f in enumerate(files):
        part, row = where[f]
        arr[i] = sources[part][row]
    arr.flush()
    del arr
    os.replace(partial, final)
    seconds = time.perf_counter() - t0
    entry = {"images": len(files), "grid": entries[0]["grid"], "channels": entries[0]["channels"], "files": files,
             "joined_from": parts, "extract_seconds": round(seconds, 2)}  # fmt: skip
    return entry, {"images": len(files), "seconds": round(seconds, 2), "joined_from": parts}


def _check_arguments(images: str | os.PathLike, batch_size: int, save_every: float, views: Sequence[str]) -> Path:
    """The image folder, once the settings of an extraction are checked."""
    if batch_size < 1:
        raise ConfigError("batch_size: expected a positive integer")
    if not save_every >= 0:  # also refuses NaN
        raise ConfigError(f"save_every: expected a number of seconds >= 0, got {save_every!r}")
    check_views(views, "views")
    image_root = Path(images)
    if not image_root.is_dir():
        raise DataError(f"{image_root}: image folder not found")
    return image_root


def _read_meta(meta_path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The ``features.json`` of an extraction folder to resume (new: the settings and no splits); one
    :class:`DataError` line when it is unreadable, one :class:`ConfigError` when it holds other settings."""
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{meta_path}: not a readable features.json ({type(e).__name__}); delete it to extract again") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("splits", {}), dict):
            raise DataError(f"{meta_path}: expected a JSON object with a 'splits' mapping; delete it to extract again")
    if meta and {k: meta.get(k) for k in settings} != settings:
        raise ConfigError(f"{meta_path}: holds features of other settings (backbone/size/dtype); use another folder")
    meta.update(settings)
    meta.setdefault("splits", {})
    return meta


class _SplitExtraction:
    """One extraction's fixed settings; :meth:`run` extracts one split (or one view of it), resumably."""

    def __init__(self, extractor: FeatureExtractor, image_root: Path, out: Path, batch_size: int, workers: int,
                 max_images: int | None, progress_stream: TextIO | None, save_every: float) -> None:  # fmt: skip
        self.extractor, self.image_root, self.out = extractor, image_root, out
        self.batch_size, self.workers = batch_size, workers
        self.max_images, self.progress_stream, self.save_every = max_images, progress_stream, save_every

    def run(self, split: str, records: list, view: str | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Extract ``records`` into ``{split}_ims[.{view}].npy``. Returns the split's ``features.json`` entry
        (None while it is partial) and this call's timing."""
        from .data.images import load_image

        out, extractor, batch_size = self.out, self.extractor, self.batch_size
        n = len(records)
        image_root = self.image_root
        paths = [_image_path(image_root, r) for r in records]
        files = [str(p.relative_to(image_root)) for p in paths]
        final = out / view_file(split, view)
        partial = final.with_name(final.name + ".partial")
        state_path = out / (f"{split}.progress.json" if view is None else f"{split}.{view}.progress.json")
        # probe the grid shape with one image
        probe, _ = extractor.pixels.collate([load_image(paths[0])], train=False)
        shape = (n, *extractor.rows(probe, view).shape[1:])  # images × grid cells × channels
        done, earlier_seconds = 0, 0.0
        if partial.is_file() and state_path.is_file():
            state = json.loads(state_path.read_text())
            if state.get("files") == files and tuple(state.get("shape", ())) == shape:
                done, earlier_seconds = int(state["done"]), float(state.get("seconds", 0.0))
        if done == 0:
            arr = np.lib.format.open_memmap(partial, mode="w+", dtype=np.dtype(extractor.dtype), shape=shape)
        else:
            arr = np.load(partial, mmap_mode="r+")
        stop = n if self.max_images is None else min(n, done + self.max_images)
        bar = Progress(n, f"extract {split}" + (f" ({view})" if view else ""), "images", self.progress_stream)
        bar.count = done
        t0 = saved = time.perf_counter()
        start_done = done
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            nxt = pool.map(load_image, paths[done : min(done + batch_size, stop)]) if done < stop else None
            while done < stop:
                end = min(done + batch_size, stop)
                batch_images = list(nxt)
                nxt = pool.map(load_image, paths[end : min(end + batch_size, stop)]) if end < stop else None
                x, _ = extractor.pixels.collate(batch_images, train=False)
                rows = extractor.rows(x, view)
                if rows.shape[1:] != shape[1:]:
                    raise DataError(f"{paths[done]}: backbone output of {rows.shape[1]} grid cells × {rows.shape[2]} "
                                    f"channels differs from the first image's {shape[1]} × {shape[2]}")  # fmt: skip
                arr[done:end] = rows
                done = end
                now = time.perf_counter()
                if now - saved >= self.save_every or done == stop:
                    # rows reach the disk before the count that promises them; every save_every seconds
                    # rather than every batch (an msync and a JSON file per 16 images)
                    arr.flush()
                    elapsed = earlier_seconds + now - t0  # over resumed calls too
                    atomic_write_json({"done": done, "shape": list(shape), "files": files, "seconds": elapsed}, state_path, indent=None)
                    saved = now
                bar.update(len(batch_images))
        bar.close()
        seconds = time.perf_counter() - t0
        timing = {"images": done - start_done, "seconds": round(seconds, 2),
                  "images_per_second": round((done - start_done) / max(seconds, 1e-9), 1)}  # fmt: skip
        del arr
        if done < n:
            return None, timing
        os.replace(partial, final)
        state_path.unlink(missing_ok=True)
        total = earlier_seconds + seconds
        entry = {"images": n, "grid": shape[1], "channels": shape[2], "files": files,
                 "extract_seconds": round(total, 2), "images_per_second": round(n / max(total, 1e-9), 1),
                 "device": str(extractor.device), "threads": torch.get_num_threads()}  # fmt: skip
        return entry, timing
