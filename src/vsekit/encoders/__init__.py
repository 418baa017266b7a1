"""Image and text encoders, one module per family, all behind one registry.

* :mod:`.precomp`: precomputed feature sets (regions, grid cells, frames, global vectors) -> fc (+ the
  VSE∞ residual MLP) -> pooling. Region (i.i.d.) or grid (per-sample rate) size augmentation.
* :mod:`.rnn`: the VSE∞ BiGRU (directions averaged, pooling over words) and the VSE++ GRU (last state).

Encoders return *unnormalised* embeddings; :class:`vsekit.models.VSEModel` applies the l2 normalisation
(and the order-embedding ``abs``) so that every family treats them the same way. Submodule names follow
the official checkpoints (``fc``, ``mlp.layers``, ``mlp.bns``, ``gpool``, ``embed``, ``rnn``) so that
official weights map onto them one to one.
"""

from .common import MLP, augment_tokens, compact, drop_grid_elements, drop_set_elements, l2norm, valid_mask
from .registry import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    create_image_encoder,
    create_text_encoder,
    list_image_encoders,
    list_text_encoders,
    register_image_encoder,
    register_text_encoder,
)
from .precomp import PrecompImageEncoder  # noqa: E402  (registers "precomp")
from .rnn import BiGRUTextEncoder, GRUTextEncoder, load_word_vectors  # noqa: E402  (registers "bigru", "gru")

__all__ = [
    "IMAGE_ENCODERS",
    "MLP",
    "TEXT_ENCODERS",
    "BiGRUTextEncoder",
    "GRUTextEncoder",
    "PrecompImageEncoder",
    "augment_tokens",
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
