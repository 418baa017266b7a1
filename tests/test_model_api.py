"""Small promises of the model API: global feature vectors given as N×D, and the similarity functions at the
top level of the package."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vsekit
from vsekit.config import apply_overrides
from vsekit.errors import DataError
from vsekit.presets import get_preset
from vsekit.text import build_vocab

CAPTIONS = ["a red disc", "a blue square on the left", "two green triangles"]


def _model(preset: str, *overrides: str) -> vsekit.VSEModel:
    cfg = apply_overrides(get_preset(preset), ["model.image.img_dim=12", "model.embed_size=8", "model.text.word_dim=6",
                                               *overrides])  # fmt: skip
    torch.manual_seed(0)
    return vsekit.create_model(cfg.model, build_vocab(CAPTIONS, min_count=1))


def test_global_feature_vectors_are_accepted_as_n_by_d():
    """VSE++'s precomputed features are one vector per image: N×D means N images of one region each."""
    model = _model("vsepp")
    feats = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    got = model.encode_image(feats)
    assert got.shape == (5, 8)
    torch.testing.assert_close(got, model.encode_image(feats[:, None, :]))
    torch.testing.assert_close(model.encode_image(torch.from_numpy(feats)), got)
    with pytest.raises(DataError, match="expected N×K×D or N×D features"):
        model.encode_image(feats[None, None])


@pytest.mark.parametrize("preset", ["vsepp", "vse0_order"])
def test_similarity_functions_are_exported_beside_the_losses(preset):
    model = _model(preset)
    images = model.encode_image(np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32))
    texts = model.encode_text(CAPTIONS)
    function = {"cosine": vsekit.cosine_similarity, "order": vsekit.order_similarity}[model.config.similarity]
    torch.testing.assert_close(function(images, texts), model.similarity(images, texts))
    assert vsekit.triplet_hinge_loss and vsekit.SIMILARITIES[model.config.similarity] is function
