"""The model an index was built with, by the name a person knows it by (the page's footer, ``/api/stats``).

An index's ``index.json`` records the checkpoint it was built with: ``checkpoint`` (where it was, absolute),
``given`` (as the build was given it: a file, a run folder, a model folder or a ready model's name) and ``name``
(its training config's name). From these:

* a **ready model** (``vsekit models``): its name, e.g. ``rsicd-aerial``, with the description and test metrics
  of its manifest;
* a **model folder** (``vsekit export``): the folder's name, with its manifest's description and metrics;
* a **run**: the training config's name (else the run folder's name); its test metrics are not recorded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vsekit.errors import CheckpointError
from vsekit.pretrained import MANIFEST, PRETRAINED_ROOT, read_manifest

__all__ = ["describe_model"]


def describe_model(model: dict[str, Any] | None) -> dict[str, Any]:
    """``model_name``, ``model_source`` (``ready``, ``folder`` or ``run``), ``model_description`` and
    ``model_metrics`` of the ``model`` entry of an index.json (all None / empty when it names nothing)."""
    none: dict[str, Any] = {"model_name": None, "model_source": None, "model_description": None, "model_metrics": {}}
    if not isinstance(model, dict):
        return none
    given, checkpoint = str(model.get("given") or ""), str(model.get("checkpoint") or "")
    folder = _model_folder(given, checkpoint)
    if folder is not None:
        manifest = _manifest(folder)
        source = "ready" if folder.parent.resolve() == PRETRAINED_ROOT.resolve() else "folder"
        description = manifest.get("description")
        return {
            "model_name": folder.name, "model_source": source,
            "model_description": str(description) if description else None, "model_metrics": _metrics(manifest),
        }  # fmt: skip
    name = str(model.get("name") or "") or (Path(checkpoint).parent.name if checkpoint else "")
    return {**none, "model_name": name or None, "model_source": "run" if name else None}


def _model_folder(given: str, checkpoint: str) -> Path | None:
    """The model folder (ready or not) the index was built with, if it was one: the recorded folder when it is still
    there, else (an index built with another installation of vsekit) the ready model of the same name."""
    if not checkpoint:
        return None
    path = Path(checkpoint)
    try:
        if path.exists():
            return path if path.is_dir() and (path / MANIFEST).is_file() else None
        ready = PRETRAINED_ROOT / path.name
        if (given == path.name or path.parent.name == PRETRAINED_ROOT.name) and (ready / MANIFEST).is_file():
            return ready
    except (OSError, ValueError):  # a name this file system refuses
        return None
    return None


def _manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest, or nothing to show when it is unreadable (the page still names the model)."""
    try:
        return read_manifest(folder)
    except CheckpointError:
        return {}


def _metrics(manifest: dict[str, Any]) -> dict[str, float]:
    metrics = manifest.get("metrics")
    if not isinstance(metrics, dict):
        return {}
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[str(key)] = float(value)
    return out
