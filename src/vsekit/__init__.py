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

from .checkpoint import load
from .config import TrainConfig
from .configure import load_config
from .convert import convert_official
from .data import KarpathyJSON, PrecompDataset, Vocabulary, make_synthetic
from .errors import CheckpointError, ConfigError, DataError, VsekitError
from .evaluation import PROTOCOLS, ensemble_sims, evaluate_model, evaluate_protocol, evaluate_sims
from .losses import ContrastiveLoss, triplet_hinge_loss
from .models import SIMILARITIES, VSEModel, cosine_similarity, create_model, order_similarity
from .pooling import GPO, create_pooling, list_poolings
from .presets import get_preset, list_presets
from .training import train

__version__ = "0.1.0"

__all__ = [
    "GPO",
    "PROTOCOLS",
    "SIMILARITIES",
    "CheckpointError",
    "ConfigError",
    "ContrastiveLoss",
    "DataError",
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
