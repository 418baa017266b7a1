"""Image and text encoders, one module per family, all behind one registry.

* :mod:`.precomp`: precomputed feature sets (regions, grid cells, frames, global vectors) -> fc (+ the
  VSE∞ residual MLP) -> pooling. Region (i.i.d.) or grid (per-sample rate) size augmentation.
* :mod:`.rnn`: the VSE∞ BiGRU (directions averaged, pooling over words) and the VSE++ GRU (last state).
* :mod:`.dualpath`: Dual-Path's deep text CNN (shift augmentation, test-time sum over shifts) and its
  image branch (CNN backbone -> two fc+BN layers, test-time sum over the horizontal flip).
* :mod:`.backbone`: raw images through a CNN backbone: the VSE∞ grid encoder (``backbone``: grid
  cells -> fc -> pooling, grid size augmentation) and the VSE++ full-image encoder (``cnn_global``).
* :mod:`.transformer`: the VSE∞ BERT branch: a local Hugging Face encoder (``bert``) -> ``linear`` ->
  pooling over all tokens, with word-level mask / random / delete augmentation.

Encoders return *unnormalised* embeddings; :class:`vsekit.models.VSEModel` applies the l2 normalisation
(and the order-embedding ``abs``) so that every family treats them the same way. Submodule names follow
the official checkpoints (``fc``, ``mlp.layers``, ``mlp.bns``, ``gpool``, ``embed``, ``rnn``) so that
official weights map onto them one to one.
"""

from .common import MLP, augment_tokens, compact, drop_grid_elements, drop_set_elements, l2norm, valid_mask
from .registry import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    TextInputs,
    check_encoder_config,
    check_pooling,
    create_image_encoder,
    create_text_encoder,
    list_image_encoders,
    list_text_encoders,
    register_image_encoder,
    register_text_encoder,
)
from .precomp import PrecompImageEncoder  # noqa: E402  (registers "precomp")
from .rnn import BiGRUTextEncoder, GRUTextEncoder, load_word_vectors  # noqa: E402  (registers "bigru", "gru")
from .dualpath import DualPathImageEncoder, TextCNNEncoder  # noqa: E402  (registers "dualpath_image", "textcnn")
from .transformer import TransformerTextEncoder, augment_words  # noqa: E402  (registers "transformer")
from .backbone import GlobalCNNImageEncoder, GridImageEncoder  # noqa: E402  (registers "backbone", "cnn_global")

__all__ = [
    "IMAGE_ENCODERS",
    "MLP",
    "TEXT_ENCODERS",
    "TextInputs",
    "BiGRUTextEncoder",
    "DualPathImageEncoder",
    "GlobalCNNImageEncoder",
    "GRUTextEncoder",
    "GridImageEncoder",
    "PrecompImageEncoder",
    "TextCNNEncoder",
    "TransformerTextEncoder",
    "augment_tokens",
    "augment_words",
    "check_encoder_config",
    "check_pooling",
    "compact",
    "create_image_encoder",
    "create_text_encoder",
    "drop_grid_elements",
    "drop_set_elements",
    "l2norm",
    "list_image_encoders",
    "list_text_encoders",
    "load_word_vectors",
    "register_image_encoder",
    "register_text_encoder",
    "valid_mask",
]
