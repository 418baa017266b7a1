"""Checkpoints: one self-describing file per model.

A vsekit checkpoint is a ``torch.save`` of a plain dict (loadable with ``weights_only=True``)::

    format      "vsekit-checkpoint"
    version     1
    config      the resolved TrainConfig as nested dicts (rebuilds the model)
    vocab       the tokenizer (Vocabulary.to_dict(), or a Hugging Face tokenizer's files)
    model       the model's state_dict (every tensor in the file is on the CPU)
    epoch       number of completed epochs
    step        number of completed optimisation steps
    best_rsum   best validation rsum so far, best_epoch its epoch
    optimizer, scaler, rng   training state (only in ``last.pt``; used to resume)

Files are written atomically, so a killed run never leaves a truncated checkpoint.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig, from_dict
from .data.files import read_extractor_settings
from .text import tokenizer_from_dict
from .device import resolve_device
from .errors import CheckpointError, ConfigError, first_line
from .io import atomic_torch_save
from .pretrained import find_model_folder, load_partial_state, packaged_tokenizer, read_model_folder

FORMAT = "vsekit-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, model: Any, config: TrainConfig, **state: Any) -> Path:
    """Write a checkpoint for ``model`` (a :class:`vsekit.models.VSEModel`) atomically.

    Extra keyword arguments (epoch, step, best_rsum, optimizer, ...) are stored as they are.
    """
    from .config import to_dict

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": to_dict(config),
        "vocab": model.tokenizer.to_dict(),
        "model": _on_cpu(model.state_dict()),
        **_on_cpu(state),
    }
    return atomic_torch_save(payload, path)


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in its dicts, lists and tuples detached and on the CPU: a checkpoint written on a
    GPU (weights, optimizer state, weight average) reads back anywhere, and loading moves each part to its device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a vsekit checkpoint file into its dict (tensors on the CPU)."""
    folder = find_model_folder(path)
    if folder is not None:  # a model folder, or the name of a ready model
        return read_model_folder(folder)
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: folder holds no best.pt or last.pt checkpoint")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first_line(e)})") from None
    except Exception as e:  # unpickling refused (e.g. an official checkpoint with a pickled Namespace)
        raise CheckpointError(f"{path}: not a vsekit checkpoint ({first_line(e)}); official checkpoints need conversion") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vsekit checkpoint (missing format={FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r} is not supported (expected {VERSION})")
    for key in ("config", "vocab", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks the {key!r} entry")
    ckpt["path"] = str(path)
    return ckpt


def recorded_extractor(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """How a feature model's training features were made (``vsekit extract``'s backbone, image size, dtype and
    preprocessing), so that photos can be turned into the same features: recorded in the checkpoint by training,
    or, for a checkpoint written before vsekit recorded it, read from the ``features.json`` of its
    ``data.features`` folder where that folder is on this machine. None otherwise."""
    recorded = ckpt.get("extractor")
    if isinstance(recorded, dict):
        return recorded
    data = ckpt.get("config", {}).get("data") if isinstance(ckpt.get("config"), dict) else None
    return read_extractor_settings(data.get("features")) if isinstance(data, dict) else None


def config_from_checkpoint(ckpt: dict[str, Any]) -> TrainConfig:
    """The TrainConfig stored in a checkpoint dict, checked as a config file would be (a damaged or hand-edited
    checkpoint can hold values that no training run writes, such as ``num_layers=0``)."""
    from .configure import validate_model

    try:
        cfg = from_dict(TrainConfig, ckpt["config"])
        validate_model(cfg)
        return cfg
    except ConfigError as e:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: stored config is invalid ({e})") from None


def model_from_checkpoint(ckpt: dict[str, Any]) -> Any:
    """Rebuild the model of a checkpoint dict and load its weights strictly."""
    from .models import create_model

    cfg = config_from_checkpoint(ckpt)
    if ckpt.get("packaged"):  # a model folder without its frozen transformer: built from the package, weights included
        tokenizer = packaged_tokenizer(cfg.model.text)
    else:
        tokenizer = tokenizer_from_dict(ckpt["vocab"], source=ckpt.get("path", "checkpoint"))
    try:
        model = create_model(cfg.model, tokenizer)
    except (ValueError, TypeError, RuntimeError) as e:  # values that validation does not know of
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: stored config builds no model ({first_line(e)})") from None
    if ckpt.get("packaged"):  # a model folder: the packaged parts came with the model's construction
        load_partial_state(model, ckpt["model"], ckpt["packaged"], ckpt.get("path", "checkpoint"))
        return model
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: weights do not match the model ({detail})") from None
    return model


def load(path: str | Path, device: str | torch.device | None = "cpu") -> Any:
    """Load a trained model for inference.

    Args:
        path: a checkpoint file, or a run folder (its ``best.pt``, else ``last.pt``).
        device: where to put the model (``"auto"`` picks CUDA when present).

    Returns:
        A :class:`vsekit.models.VSEModel` in eval mode with ``encode_image``, ``encode_text`` and
        ``similarity``. A model trained on extracted features also embeds photos when the checkpoint records
        how the features were made (:func:`recorded_extractor`), averaged over its ``data.eval_views``.
    """
    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    if model.image_input.kind == "features":  # photos too, through the extractor of its training features
        model.use_extractor(recorded_extractor(ckpt), views=config_from_checkpoint(ckpt).data.eval_views)
    return model.to(resolve_device(device or "cpu")).eval()
