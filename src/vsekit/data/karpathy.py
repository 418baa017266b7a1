"""The Karpathy-split JSON reader (``dataset_coco.json``, ``dataset_flickr30k.json``, ``dataset_rsicd.json``)."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vsekit.errors import DataError


@dataclass(frozen=True)
class ImageRecord:
    """One image of a Karpathy-split JSON file.

    Attributes:
        filename: image file name, e.g. ``COCO_val2014_000000391895.jpg``.
        filepath: sub-folder (``val2014`` for COCO), or ``""`` if the file gives none.
        split: ``train``, ``restval``, ``val`` or ``test``.
        captions: the raw captions, stripped, in file order.
        image_id: ``cocoid`` if present, else ``imgid``, else the position in the file.
    """

    filename: str
    filepath: str
    split: str
    captions: tuple[str, ...]
    image_id: int


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class KarpathyJSON:
    """Reader of Karpathy-split JSON files (``dataset_coco.json``, ``dataset_flickr30k.json``,
    ``dataset_rsicd.json``).

    The file is read and validated once, at construction.

    Args:
        path: the JSON file.

    Raises:
        DataError: naming the file and the field, if the file is missing or malformed.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        name = str(self.path)
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DataError(f"Karpathy JSON file not found: {self.path}") from None
        except UnicodeDecodeError:
            raise DataError(f"{name}: expected UTF-8 JSON") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        except OSError as e:
            raise DataError(f"cannot read {name}: {e.strerror}") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{name}: expected a JSON object with an 'images' list")
        self.dataset: str = str(data.get("dataset", ""))
        self._records = [self._parse(name, n, im) for n, im in enumerate(data["images"])]

    @staticmethod
    def _parse(name: str, n: int, im: Any) -> ImageRecord:
        where = f"{name}: images[{n}]"
        if not isinstance(im, dict):
            raise DataError(f"{where}: expected an object with filename, split and sentences")
        for field in ("filename", "split"):
            if not isinstance(im.get(field), str) or not im[field]:
                raise DataError(f"{where}.{field}: expected a non-empty string")
        filepath = im.get("filepath", "")
        if not isinstance(filepath, str):
            raise DataError(f"{where}.filepath: expected a string")
        sentences = im.get("sentences")
        if not isinstance(sentences, list):
            raise DataError(f"{where}.sentences: expected a list of {{raw, tokens}}")
        captions = []
        for s, sent in enumerate(sentences):
            raw = sent.get("raw") if isinstance(sent, dict) else None
            if raw is None and isinstance(sent, dict) and isinstance(sent.get("tokens"), list):
                raw = " ".join(str(t) for t in sent["tokens"])
            if not isinstance(raw, str):
                raise DataError(f"{where}.sentences[{s}]: expected an object with a string 'raw'")
            captions.append(raw.strip())
        image_id = n
        for field in ("cocoid", "imgid"):
            if field in im:
                if not _is_int(im[field]):
                    raise DataError(f"{where}.{field}: expected an integer, got {im[field]!r}")
                image_id = im[field]
                break
        return ImageRecord(im["filename"], filepath, im["split"], tuple(captions), image_id)

    def __len__(self) -> int:
        return len(self._records)

    def splits(self) -> dict[str, int]:
        """Return the number of images of every split, in order of first appearance."""
        return dict(Counter(r.split for r in self._records))

    def records(self, split: str | Sequence[str]) -> list[ImageRecord]:
        """Return the images of one split or of several (e.g. ``["train", "restval"]``), in file order.

        Args:
            split: a split name or a list of them.

        Returns:
            The image records.

        Raises:
            DataError: if a split does not occur in the file.
        """
        wanted = {split} if isinstance(split, str) else set(split)
        if not wanted:
            raise DataError(f"{self.path}: expected at least one split name")
        unknown = sorted(wanted - set(self.splits()))
        if unknown:
            raise DataError(
                f"{self.path}: no images with split {', '.join(map(repr, unknown))}; "
                f"the file has {', '.join(map(repr, self.splits()))}"
            )
        return [r for r in self._records if r.split in wanted]


def captions_from_records(records: Sequence[ImageRecord], k: int) -> list[str]:
    """Return the first ``k`` captions of every record, in order (``len(records) * k`` captions).

    Args:
        records: image records, e.g. from :meth:`KarpathyJSON.records`.
        k: captions per image.

    Returns:
        The captions.

    Raises:
        DataError: naming the image if one has fewer than ``k`` captions.
    """
    if not isinstance(k, int) or k < 1:
        raise DataError(f"captions_per_image: expected a positive integer, got {k!r}")
    out: list[str] = []
    for r in records:
        if len(r.captions) < k:
            raise DataError(f"image {r.filename}: expected at least {k} captions, got {len(r.captions)}")
        out.extend(c.strip() for c in r.captions[:k])
    return out
