"""Every registered thing builds, trains a step and survives a checkpoint (the timm-style sweep).

For every preset: a tiny model of its config (its encoder kinds, poolings, similarity and loss; small widths,
the tiny CNN for pixel models, a 2-layer BERT for transformer ones) takes one training step's loss and
backward pass, and its checkpoint reloads to the same embeddings. Every image and text encoder kind, pooling
and backbone is swept as well, so a broken registry entry fails here by name.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vsekit
from vsekit.backbones import create_backbone, list_backbones
from vsekit.checkpoint import save_checkpoint
from vsekit.config import NEGATIVES, apply_overrides
from vsekit.configure import validate
from vsekit.data import build_vocab, collate_captions
from vsekit.data.collate import Batch
from vsekit.encoders import list_image_encoders, list_text_encoders
from vsekit.losses import ContrastiveLoss, Criterion
from vsekit.models import create_model
from vsekit.pooling import create_pooling, list_poolings
from vsekit.presets import get_preset, list_presets
from vsekit.training import compute_loss

transformers = pytest.importorskip("transformers")

from .test_transformer import make_tiny_bert  # noqa: E402

CAPTIONS = ["a red car next to a small dog", "two big trees by a river", "a blue house", "three white boats"]
PIXEL_KINDS = {"backbone", "cnn_global", "dualpath_image"}
FEATURE_DIM = 12
SET_SIZES = (3, 5, 1, 4)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


def tiny(name: str, bert) -> vsekit.TrainConfig:
    """The preset's config with small widths and offline parts, validated as ``vsekit train`` would."""
    base = get_preset(name)
    overrides = ["model.embed_size=16", "data.train_views=[]", "data.eval_views=[]"]
    if base.model.text.kind != "transformer":  # the word embeddings of the families that have them
        overrides += ["model.text.word_dim=8", "model.text.word_vectors=null"]
    if base.model.image.kind in PIXEL_KINDS:
        overrides += ["model.image.backbone=tiny", "model.image.image_size=32", "model.image.pretrained=false"]
    else:
        overrides += [f"model.image.img_dim={FEATURE_DIM}"]
    if base.model.text.kind == "transformer":
        overrides += [f"model.text.transformer_path={bert}"]
    if base.model.instance_classes == -1:
        overrides += [f"model.instance_classes={len(CAPTIONS)}"]  # what training resolves from the data
    cfg = apply_overrides(base, overrides)
    validate(cfg, require_data=False)
    return cfg


def image_items(cfg) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if cfg.model.image.kind in PIXEL_KINDS:
        return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in SET_SIZES]
    return [rng.standard_normal((k, FEATURE_DIM)).astype(np.float32) for k in SET_SIZES]


def one_step(model, cfg) -> torch.Tensor:
    """The training loss of one batch (the trainer's :func:`compute_loss`), after ``backward``."""
    images, image_lengths = model.image_input.collate(image_items(cfg), train=True)
    captions, caption_lengths = collate_captions([model.tokenizer.encode(c) for c in CAPTIONS], model.tokenizer.pad_id)
    ids = torch.arange(len(CAPTIONS))
    batch = Batch(images, image_lengths, captions, caption_lengths, ids, ids)
    model.train()
    loss = compute_loss(model, batch, ContrastiveLoss.from_config(cfg.loss), cfg, "fp32", text_ids=ids)
    loss.backward()
    return loss


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_builds_trains_a_step_and_round_trips(name, bert, tmp_path):
    cfg = tiny(name, bert)
    if cfg.model.text.kind == "transformer":
        from vsekit.text.hf import HFTokenizer

        tokenizer = HFTokenizer.from_pretrained(bert, max_length=cfg.model.text.max_length)
    else:
        tokenizer = build_vocab(CAPTIONS, min_count=1)
    torch.manual_seed(0)
    model = create_model(cfg.model, tokenizer)
    loss = one_step(model, cfg)
    assert torch.isfinite(loss) and loss.item() > 0, loss
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is None or torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no parameter received a gradient"

    path = save_checkpoint(tmp_path / "m.pt", model, cfg, epoch=1, step=1, best_rsum=0.0)
    loaded = vsekit.load(path)
    items = image_items(cfg)
    torch.testing.assert_close(loaded.encode_image(items), model.encode_image(items), atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.encode_text(CAPTIONS), model.encode_text(CAPTIONS), atol=1e-6, rtol=0)
    # a caption's embedding does not depend on the captions batched with it (encode_text batches by length)
    alone = torch.cat([loaded.encode_text([c]) for c in CAPTIONS])
    torch.testing.assert_close(loaded.encode_text(CAPTIONS, batch_size=2), alone, atol=2e-5, rtol=0)


def test_the_presets_cover_every_encoder_kind_and_negative_mining():
    presets = [get_preset(name) for name in list_presets()]
    assert {p.model.image.kind for p in presets} == set(list_image_encoders())
    assert {p.model.text.kind for p in presets} == set(list_text_encoders())
    assert {p.loss.negatives for p in presets} == set(NEGATIVES)
    assert {p.model.similarity for p in presets} == {"cosine", "order"}


@pytest.mark.parametrize("name", sorted(list_poolings()))
def test_every_pooling_pools_padded_sets_and_backpropagates(name):
    torch.manual_seed(0)
    pooling = create_pooling(name)
    features = torch.randn(3, 5, 8, requires_grad=True)
    lengths = torch.tensor([5, 2, 1])
    out = pooling(features, lengths)
    pooled = out[0] if isinstance(out, tuple) else out
    assert pooled.shape == (3, 8) and torch.isfinite(pooled).all()
    pooled.sum().backward()
    assert torch.all(features.grad[1, 2:] == 0) and torch.all(features.grad[2, 1:] == 0)  # padding stays out


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_maps_pixels_to_a_feature_map(name):
    try:
        net = create_backbone(name, pretrained=False)
    except vsekit.ConfigError as e:  # torchvision backbones without torchvision
        pytest.skip(str(e))
    pixels = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = net(pixels)
    assert out.ndim == 4 and out.shape[0] == 2 and torch.isfinite(out).all()
    out.mean().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


@pytest.mark.parametrize("term", ["ranking", "instance_image", "instance_text"])
def test_every_loss_term_alone_trains_a_model(term, bert):
    weights = {"ranking": 0.0, "instance_image": 0.0, "instance_text": 0.0, term: 1.0}
    overrides = [f"loss.{name}_weight={w}" for name, w in weights.items()]
    cfg = apply_overrides(tiny("dualpath_stage2", bert), overrides)
    assert Criterion.from_config(cfg.loss).names == [term]
    torch.manual_seed(0)
    model = create_model(cfg.model, build_vocab(CAPTIONS, min_count=1))
    loss = one_step(model, cfg)
    assert torch.isfinite(loss) and loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
