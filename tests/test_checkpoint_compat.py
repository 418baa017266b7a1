"""Checkpoints written by vsekit 0.1.0 before its package was reorganised still load and embed the same.

The fixtures (tests/fixtures/checkpoints_v1/, written by make.py there with the code of that time) hold one
tiny model per encoder family and the embeddings it gave for fixed images and captions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import vsekit
from vsekit.checkpoint import read_checkpoint
from vsekit.config import TrainConfig, from_dict, to_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints_v1"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.pt"))


def test_every_family_has_a_fixture():
    assert NAMES == ["dualpath_tiny_cnn_textcnn", "grid_tiny_cnn_bigru", "region_gpo_bigru", "region_transformer",
                     "vsepp_order_gru"]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_old_checkpoint_loads_and_gives_the_same_embeddings(name):
    if name == "region_transformer":
        pytest.importorskip("transformers", reason="the transformer text encoder needs transformers")
    expected = np.load(FIXTURES / f"{name}.npz")
    model = vsekit.load(FIXTURES / f"{name}.pt")
    images = expected["images"]
    got_images = model.encode_image(images if images.dtype == np.float32 else list(images)).numpy()
    got_texts = model.encode_text([str(c) for c in expected["captions"]]).numpy()
    np.testing.assert_allclose(got_images, expected["image_embeddings"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got_texts, expected["text_embeddings"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_old_checkpoint_config_keeps_its_keys(name):
    stored = read_checkpoint(FIXTURES / f"{name}.pt")["config"]
    got = to_dict(from_dict(TrainConfig, stored))
    added = {key: got.pop(key) for key in set(got) - set(stored)}
    assert got == stored
    defaults = to_dict(TrainConfig())
    assert added == {key: defaults[key] for key in added}  # top-level fields newer than the fixture: their defaults
