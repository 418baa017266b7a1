"""What a build records about itself in ``index.json`` (the model, the collection, how many items it embedded,
reused and removed) and the line it prints when it is done."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsekit.data.files import read_extractor_settings
from vsekit.index.collection import Collection
from vsekit.index.store import MODALITIES, IndexPart

__all__ = ["ModelSource", "collection_summary", "extractor_settings", "item_counts", "model_summary", "summary_line"]

log = logging.getLogger("vsekit.index")


@dataclass(frozen=True)
class ModelSource:
    """The checkpoint a build embeds with.

    Attributes:
        path: the checkpoint file (absolute, symlinks resolved).
        sha256: its SHA-256 (an index is reused only by a build with the same).
        given: the checkpoint as the caller gave it (a file or a run folder).
        run_name: the ``name`` of its training config.
        eval_views: the ``data.eval_views`` of its training config (the views evaluation averaged over).
        extractor: for a feature model, how its training features were made (see
            :func:`vsekit.checkpoint.recorded_extractor`), or None.
    """

    path: Path
    sha256: str
    given: str
    run_name: str
    eval_views: Any
    extractor: dict[str, Any] | None = None


def model_summary(model: Any, source: ModelSource) -> dict[str, Any]:
    """The ``model`` entry of index.json: the checkpoint (where, which) and what the model is."""
    cfg = model.config
    image = {"kind": cfg.image.kind, "pooling": cfg.image.pooling}
    if cfg.image.kind in ("precomp",) or model.image_input.kind == "features":
        image["img_dim"] = cfg.image.img_dim
    else:
        image.update(backbone=cfg.image.backbone, image_size=cfg.image.image_size)
    return {
        "name": source.run_name,
        "checkpoint": str(source.path),
        "given": source.given,
        "sha256": source.sha256,
        "size": source.path.stat().st_size,
        "embed_size": cfg.embed_size,
        "similarity": cfg.similarity,
        "image": image,
        "text": {"kind": cfg.text.kind, "pooling": cfg.text.pooling},
        "vocab_size": len(model.tokenizer),
    }


def extractor_settings(kind: str, source: Path, features: str | os.PathLike | None) -> dict[str, Any] | None:
    """What made a feature collection's features (the ``features.json`` that ``vsekit extract`` writes next to
    them: backbone, image size, dtype, preprocessing), so that query images get the same features; None for
    other collections and for feature folders without it."""
    folder = Path(features) if features is not None else source if kind == "precomp" else None
    return read_extractor_settings(folder)


def collection_summary(
    col: Collection,
    image_root: str | os.PathLike | None,
    split: str | None,
    features: str | os.PathLike | None,
    photo_extractor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``collection`` entry of index.json: the source, its kind and the options it was read with, and the
    extractor of its features (that of a features folder, or ``photo_extractor`` for image files that a feature
    model's recorded extractor turned into features)."""
    return {
        "root": str(col.root),
        "source": str(col.source),
        "kind": col.kind,
        "image_root": None if image_root is None else str(Path(image_root).absolute()),
        "split": split,
        "features": None if features is None else str(Path(features).absolute()),
        "views": list(col.views),
        "extractor": extractor_settings(col.kind, col.source, features) if col.features else photo_extractor,
    }


def item_counts(
    previous: dict[str, IndexPart], columns: dict[str, dict[str, list[Any]]], encoded: dict[str, int]
) -> dict[str, dict[str, int]]:
    """The ``counts`` (items indexed), ``encoded``, ``reused`` and ``removed`` entries of index.json."""
    counts = {"images": len(columns["image"]["id"]), "texts": len(columns["text"]["id"])}
    old_keys = {m: set(previous[m].columns["key"]) if m in previous else set() for m in MODALITIES}
    return {
        "counts": counts,
        "encoded": encoded,
        "reused": {"images": counts["images"] - encoded["images"], "texts": counts["texts"] - encoded["texts"]},
        "removed": {
            "images": len(old_keys["image"] - set(columns["image"]["key"])),
            "texts": len(old_keys["text"] - set(columns["text"]["key"])),
        },
    }


def summary_line(out: Path, meta: dict[str, Any]) -> str:
    """The line a build prints: items, what was embedded (and how fast), reused and skipped, recall, time."""
    timing, counts, encoded, reused = meta["timing"], meta["counts"], meta["encoded"], meta["reused"]
    rates = [f"{timing[f'{w}_per_second']:.1f} {w}/s" for w in ("images", "texts") if f"{w}_per_second" in timing]
    recall = [f"{m} recall@10 {meta['parts'][m]['recall']['recall_at_10']:.3f}" for m in MODALITIES
              if meta["parts"][m].get("recall")]  # fmt: skip
    return (
        f"index {out}: {counts['images']} images, {counts['texts']} texts; embedded {encoded['images']} images and "
        f"{encoded['texts']} texts" + (f" ({', '.join(rates)})" if rates else "")
        + f", reused {reused['images'] + reused['texts']}, skipped {len(meta['skipped'])}"
        + (f"; {', '.join(recall)}" if recall else "") + f"; {timing['seconds']:.1f}s"
    )  # fmt: skip
