"""vsekit: visual-semantic embedding (VSE++, VSE∞ / GPO) — train, evaluate and use image-text embeddings.

The public API:

* models: :func:`load` a checkpoint, :class:`VSEModel` (``encode_image``, ``encode_text``, ``similarity``),
  the similarity functions :func:`cosine_similarity`, :func:`order_similarity` (by name: :data:`SIMILARITIES`),
  :func:`create_model`, :func:`convert_official` (import an official VSE∞ / VSE++ checkpoint);
* pooling: :class:`GPO`, :func:`create_pooling`, :func:`list_poolings`;
* losses: :func:`triplet_hinge_loss`, :class:`ContrastiveLoss`;
* evaluation: :func:`evaluate_sims`, :func:`evaluate_model`, :data:`PROTOCOLS`;
* training: :func:`train` with a :class:`TrainConfig` (:func:`load_config`, :func:`get_preset`);
* data: :func:`make_synthetic` (built-in data), :class:`PrecompDataset`, :class:`KarpathyJSON`.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the public names, for type checkers and the API reference; imported on first use below
    from .checkpoint import load
    from .config import TrainConfig
    from .configure import load_config
    from .convert import convert_official
    from .data import KarpathyJSON, PrecompDataset, Vocabulary, make_synthetic
    from .errors import CheckpointError, ConfigError, DataError, FolderInUseError, VsekitError
    from .evaluation import PROTOCOLS, ensemble_sims, evaluate_model, evaluate_protocol, evaluate_sims
    from .losses import ContrastiveLoss, triplet_hinge_loss
    from .models import SIMILARITIES, VSEModel, cosine_similarity, create_model, order_similarity
    from .pooling import GPO, create_pooling, list_poolings
    from .presets import get_preset, list_presets
    from .training import train

_HOMES = {
    "load": "vsekit.checkpoint",
    "TrainConfig": "vsekit.config",
    "load_config": "vsekit.configure",
    "convert_official": "vsekit.convert",
    "KarpathyJSON": "vsekit.data",
    "PrecompDataset": "vsekit.data",
    "Vocabulary": "vsekit.data",
    "make_synthetic": "vsekit.data",
    "CheckpointError": "vsekit.errors",
    "ConfigError": "vsekit.errors",
    "DataError": "vsekit.errors",
    "FolderInUseError": "vsekit.errors",
    "VsekitError": "vsekit.errors",
    "PROTOCOLS": "vsekit.evaluation",
    "ensemble_sims": "vsekit.evaluation",
    "evaluate_model": "vsekit.evaluation",
    "evaluate_protocol": "vsekit.evaluation",
    "evaluate_sims": "vsekit.evaluation",
    "ContrastiveLoss": "vsekit.losses",
    "triplet_hinge_loss": "vsekit.losses",
    "SIMILARITIES": "vsekit.models",
    "VSEModel": "vsekit.models",
    "cosine_similarity": "vsekit.models",
    "create_model": "vsekit.models",
    "order_similarity": "vsekit.models",
    "GPO": "vsekit.pooling",
    "create_pooling": "vsekit.pooling",
    "list_poolings": "vsekit.pooling",
    "get_preset": "vsekit.presets",
    "list_presets": "vsekit.presets",
    "train": "vsekit.training",
}
"""Where each public name lives. ``import vsekit`` imports none of them (nor torch): a command that needs no
model, such as ``vsekit search --server``, starts in a fraction of a second; the first use of a name imports
its module."""


def __getattr__(name: str) -> Any:
    import importlib

    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value  # once imported, an ordinary attribute
        return value
    try:  # a subpackage used as an attribute (vsekit.index, vsekit.data, ...)
        return importlib.import_module(f"vsekit.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"vsekit.{name}":
            raise
    raise AttributeError(f"module 'vsekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__version__ = "0.1.0"

__all__ = [
    "GPO",
    "PROTOCOLS",
    "SIMILARITIES",
    "CheckpointError",
    "ConfigError",
    "ContrastiveLoss",
    "DataError",
    "FolderInUseError",
    "KarpathyJSON",
    "PrecompDataset",
    "TrainConfig",
    "VSEModel",
    "Vocabulary",
    "VsekitError",
    "convert_official",
    "cosine_similarity",
    "create_model",
    "create_pooling",
    "ensemble_sims",
    "evaluate_model",
    "evaluate_protocol",
    "evaluate_sims",
    "get_preset",
    "list_poolings",
    "list_presets",
    "load",
    "load_config",
    "make_synthetic",
    "order_similarity",
    "train",
    "triplet_hinge_loss",
]
