"""Reading an official VSE∞ / VSE++ checkpoint safely and recognising its layout."""

from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, first_line

KINDS: tuple[str, ...] = ("vse_infty_bigru", "vse_infty_bert", "vsepp")
"""The official layouts :func:`convert_official` understands (``kind="auto"`` detects one)."""

DESCRIPTIONS = {
    "vse_infty_bigru": "VSE∞ BiGRU (region features + BiGRU text)",
    "vse_infty_bert": "VSE∞ BERT (region features + BERT text)",
    "vsepp": "VSE++ (precomputed features + GRU text)",
}

@dataclass
class OfficialCheckpoint:
    """The parts of an official checkpoint file.

    Attributes:
        path: the file.
        image_state: ``model[0]``, the image encoder's state dict (``module.`` prefixes stripped).
        text_state: ``model[1]``, the text encoder's state dict (``module.`` prefixes stripped).
        opt: the training options (``vars(opt)``; empty when the file has none).
        epoch: the stored ``epoch`` entry, if any.
        best_rsum: the stored ``best_rsum`` entry, if any.
        iterations: the stored ``Eiters`` entry (optimisation steps), if any.
    """

    path: Path
    image_state: dict[str, Tensor]
    text_state: dict[str, Tensor]
    opt: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    best_rsum: float | None = None
    iterations: int | None = None


# ----------------------------------------------------------------------------------------------
# reading


def name_list(names: list[str], n: int = 4, quote: bool = True) -> str:
    """``'a', 'b', 'c' and 3 more`` (names as they are with ``quote=False``)."""
    shown = ", ".join(repr(x) if quote else x for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _encoder_state(raw: Any, index: int, path: Path) -> dict[str, Tensor]:
    """``model[index]`` as a str -> Tensor dict with DataParallel ``module.`` prefixes removed."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: model[{index}]: expected a state dict, got {type(raw).__name__}")
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: model[{index}][{key!r}]: expected a tensor, got {type(value).__name__}")
        name = key.removeprefix("module.")
        if name in state:
            raise CheckpointError(f"{path}: model[{index}]: key {name!r} appears with and without the 'module.' prefix")
        state[name] = value
    if not state:
        raise CheckpointError(f"{path}: model[{index}]: the state dict is empty")
    return state


def read_official_checkpoint(path: str | Path) -> OfficialCheckpoint:
    """Read an official VSE∞ / VSE++ checkpoint safely (no code from the file runs).

    The file is loaded with ``torch.load(weights_only=True)`` with ``argparse.Namespace`` (the pickled
    ``opt``) as the only allowed class.

    Args:
        path: the ``.pth`` / ``.pth.tar`` file.

    Returns:
        The checkpoint's parts.

    Raises:
        CheckpointError: if the file is missing, not a torch file, pickles other objects, is a vsekit
            checkpoint already, or lacks the ``model`` list of two state dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":
        raise CheckpointError(f"{path}: not a torch checkpoint (neither a torch.save zip archive nor a legacy torch pickle)")
    if not hasattr(torch.serialization, "safe_globals"):
        raise CheckpointError(f"converting official checkpoints needs torch >= 2.5 (this is torch {torch.__version__})")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"{path}: refusing to unpickle {found.group(1)} (an official checkpoint holds tensors, numbers and "
                f"an argparse.Namespace only)"
            ) from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first_line(e)})") from None
    except Exception as e:  # noqa: BLE001  (torch.load fails on arbitrary bytes with many exception types)
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' entry, got {type(ckpt).__name__}")
    if ckpt.get("format") == "vsekit-checkpoint":
        raise CheckpointError(f"{path}: already a vsekit checkpoint; use it directly (vsekit.load / vsekit eval)")
    model = ckpt.get("model")
    if not isinstance(model, (list, tuple)) or len(model) != 2:
        got = "no 'model' entry" if model is None else f"{type(model).__name__}"
        if isinstance(model, (list, tuple)):
            got += f" of length {len(model)}"
        raise CheckpointError(
            f"{path}: expected the official layout with 'model': [image_state_dict, text_state_dict], got {got}"
        )
    opt = ckpt.get("opt")
    if isinstance(opt, argparse.Namespace):
        opt = vars(opt)
    elif opt is None:
        opt = {}
    elif not isinstance(opt, dict):
        raise CheckpointError(f"{path}: opt: expected the training options (argparse.Namespace), got {type(opt).__name__}")

    def number(key: str, kind: type) -> Any:
        value = ckpt.get(key)
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return OfficialCheckpoint(
        path=path,
        image_state=_encoder_state(model[0], 0, path),
        text_state=_encoder_state(model[1], 1, path),
        opt=dict(opt),
        epoch=number("epoch", int),
        best_rsum=number("best_rsum", float),
        iterations=number("Eiters", int),
    )


def detect_kind(image_state: dict[str, Tensor], text_state: dict[str, Tensor], source: str = "checkpoint") -> str:
    """The official layout of a pair of encoder state dicts: one of :data:`KINDS`.

    ``bert.*`` text keys mean VSE∞-BERT, ``rnn.weight_ih_l0_reverse`` VSE∞-BiGRU, a unidirectional ``rnn``
    VSE++.

    Raises:
        CheckpointError: for unsupported image encoders (VSE∞ grid backbones, VSE++ CNNs) or an unknown layout.
    """
    image_keys = sorted(image_state)
    if any(k.startswith(("backbone.", "image_encoder.")) for k in image_keys):
        raise CheckpointError(
            f"{source}: model[0] is a VSE∞ grid image encoder (a CNN backbone, precomp_enc_type='backbone'); "
            f"only precomputed-feature ('basic') image encoders can be converted"
        )
    if any(k.startswith("cnn.") for k in image_keys):
        raise CheckpointError(
            f"{source}: model[0] is a VSE++ full-image encoder (a CNN under 'cnn.'); only precomputed-feature "
            f"(*_precomp) VSE++ checkpoints can be converted"
        )
    if any(k.startswith("bert.") for k in text_state):
        return "vse_infty_bert"
    if "rnn.weight_ih_l0_reverse" in text_state:
        return "vse_infty_bigru"
    if "rnn.weight_ih_l0" in text_state:
        return "vsepp"
    raise CheckpointError(
        f"{source}: unknown layout: model[1] has neither 'bert.*' nor 'rnn.weight_ih_l0' keys "
        f"(keys: {name_list(sorted(text_state))})"
    )


# ----------------------------------------------------------------------------------------------
# vocabularies
