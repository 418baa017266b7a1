"""Per-module learning rates, freezing, the VSE∞ unfreeze ramp, init_from, instance losses and the
order-embedding similarity, checked against hand-computed values and plain references."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from vsekit.config import ConfigError, apply_overrides
from vsekit.data import Vocabulary
from vsekit.encoders import drop_grid_elements
from vsekit.losses import instance_loss, triplet_hinge_loss
from vsekit.models import create_model, order_similarity
from vsekit.training import apply_freeze, build_optimizer, compute_loss, parameter_groups, train, unfreeze_epoch
from vsekit.training.state import restore_training_state, rng_state

from .conftest import tiny_config


def _model(cfg):
    vocab = Vocabulary.from_words(["a", "red", "car"])
    return create_model(cfg.model, vocab)


def test_lr_mults_take_the_longest_matching_prefix():
    cfg = tiny_config(
        "optim.lr=0.01",
        "optim.image_lr_mult=0.5",
        "optim.lr_mults={image_encoder.gpool: 0.1, image_encoder.gpool.linear: 0.2}",
    )
    model = _model(cfg)
    groups = {g["name"]: g for g in parameter_groups(model, cfg)}
    assert set(groups) == {"image", "text", "image_encoder.gpool", "image_encoder.gpool.linear"}
    assert groups["image"]["lr"] == pytest.approx(0.005)
    assert groups["text"]["lr"] == pytest.approx(0.01)
    assert groups["image_encoder.gpool"]["lr"] == pytest.approx(0.001)
    assert [p.shape for p in groups["image_encoder.gpool.linear"]["params"]] == [model.image_encoder.gpool.linear.weight.shape]
    n = sum(len(g["params"]) for g in groups.values())
    assert n == len(list(model.parameters()))  # every parameter exactly once


def test_unknown_module_prefix_is_a_config_error():
    cfg = tiny_config("optim.lr_mults={image_encoder.backbone: 0.1}")
    with pytest.raises(ConfigError, match="optim.lr_mults.image_encoder.backbone"):
        build_optimizer(_model(cfg), cfg)
    cfg = tiny_config("optim.freeze={nothing_here: 1}")
    with pytest.raises(ConfigError, match="optim.freeze.nothing_here"):
        apply_freeze(_model(cfg), cfg, 0)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_optimizer_choice(name):
    cfg = tiny_config(f"optim.optimizer={name}", "optim.momentum=0.9")
    opt = build_optimizer(_model(cfg), cfg)
    expected = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    assert type(opt) is expected
    if name == "sgd":
        assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_cpu_adam_is_fused_and_updates_like_the_plain_loop(name):
    cfg = tiny_config(f"optim.optimizer={name}", "optim.weight_decay=0.01")
    torch.manual_seed(0)
    model = _model(cfg)
    plain_model = copy.deepcopy(model)
    fused = build_optimizer(model, cfg)
    assert all(g["fused"] for g in fused.param_groups)
    plain = type(fused)(parameter_groups(plain_model, cfg), lr=cfg.optim.lr, weight_decay=0.01, foreach=False)
    for step in range(4):
        for m, opt in ((model, fused), (plain_model, plain)):
            torch.manual_seed(step)  # the same gradients for both
            for p in m.parameters():
                p.grad = torch.randn_like(p)
            opt.step()
    for a, b in zip(model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resume_keeps_this_machines_optimizer_kernels():
    """A checkpoint from elsewhere (no fused kernel, capturable on) resumes with the fresh optimizer's choice."""
    cfg = tiny_config()
    model = _model(cfg)
    optimizer = build_optimizer(model, cfg)
    other = torch.optim.AdamW(parameter_groups(_model(cfg), cfg), capturable=True)
    for group in other.param_groups:  # the run's own state is restored
        group["lr"] = 0.5
    ckpt = {"model": model.state_dict(), "optimizer": other.state_dict(), "epoch": 1, "step": 3,
            "best_rsum": 0.0, "best_epoch": 0, "rng": rng_state()}  # fmt: skip
    restore_training_state(ckpt, model, optimizer, torch.amp.GradScaler("cpu", enabled=False), None)
    assert all(g["fused"] and not g["capturable"] and g["lr"] == 0.5 for g in optimizer.param_groups)


def test_freeze_schedule():
    cfg = tiny_config("optim.freeze={image_encoder: 2, text_encoder.gpool: -1}")
    model = _model(cfg)
    assert unfreeze_epoch(cfg) == 2
    assert model.frozen_modules() == []  # no encoder here has a permanently frozen part
    for epoch, image_frozen in ((0, True), (1, True), (2, False), (7, False)):
        apply_freeze(model, cfg, epoch)
        assert all(p.requires_grad != image_frozen for p in model.image_encoder.parameters())
        assert not any(p.requires_grad for p in model.text_encoder.gpool.parameters())
        assert model.text_encoder.embed.weight.requires_grad


def test_frozen_module_does_not_move_and_ramp_scales_the_first_unfrozen_epoch(tmp_path):
    cfg = tiny_config("epochs=2", "optim.freeze={image_encoder.fc: 1}", "optim.unfreeze_ramp=true")
    datasets = None
    res = train(cfg, tmp_path / "run", progress_stream=None, max_steps=8)  # 8 steps = epoch 1 (frozen)
    del datasets
    first = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    # the fc of a fresh model built with the same seed
    torch.manual_seed(cfg.seed)
    fresh = create_model(cfg.model, res.model.tokenizer)
    assert torch.equal(first["image_encoder.fc.weight"], fresh.image_encoder.fc.weight.detach())
    assert not torch.equal(first["text_encoder.embed.weight"], fresh.text_encoder.embed.weight.detach())
    res = train(cfg, tmp_path / "run", progress_stream=None)
    assert res.history[0]["frozen"] == ["image_encoder.fc"] and res.history[1]["frozen"] == []
    assert not torch.equal(res.model.image_encoder.fc.weight.detach(), first["image_encoder.fc.weight"])


def test_init_from_starts_from_the_checkpoint_weights_and_vocabulary(tmp_path):
    cfg = tiny_config("epochs=1")
    a = train(cfg, tmp_path / "a", progress_stream=None)
    cfg2 = apply_overrides(cfg, [f"init_from={tmp_path / 'a' / 'best.pt'}", "epochs=1", "optim.lr=1e-12"])
    b = train(cfg2, tmp_path / "b", progress_stream=None)
    assert b.model.tokenizer == a.model.tokenizer
    # an lr of 1e-12 leaves the parameters (numerically) where stage 1 ended (BN statistics still move)
    for (k, va), vb in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.allclose(va, vb, atol=1e-6), k
    bad = apply_overrides(cfg, [f"init_from={tmp_path / 'a' / 'best.pt'}", "model.embed_size=32"])
    with pytest.raises(ConfigError, match="init_from"):
        train(bad, tmp_path / "c", progress_stream=None)


def test_instance_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(0.5)) / 2
    assert instance_loss(logits, labels).item() == pytest.approx(expected)


def test_compute_loss_weights_ranking_and_instance_terms():
    from vsekit.data import Collator, make_synthetic
    from vsekit.losses import ContrastiveLoss

    cfg = tiny_config(
        "model.instance_classes=400",
        "loss.ranking_weight=2.0",
        "loss.instance_image_weight=1.0",
        "loss.instance_text_weight=0.5",
        "model.image.size_augment=0.0",
        "model.text.augment=0.0",
    )
    ds = make_synthetic(num_train=400, num_val=0, num_test=0, captions_per_image=5)["train"]
    torch.manual_seed(0)
    model = create_model(cfg.model, Vocabulary.from_words(w for c in ds.captions() for w in c.split())).eval()
    batch = Collator(model.tokenizer, model.image_input)([ds[j] for j in (0, 7, 13, 30)])
    loss_fn = ContrastiveLoss(cfg.loss.margin, cfg.loss.negatives)
    total = compute_loss(model, batch, loss_fn, cfg, "fp32")
    img, img_raw = model.forward_image(batch.images, batch.image_lengths, return_raw=True)
    cap, cap_raw = model.forward_text(batch.captions, batch.caption_lengths, return_raw=True)
    rank = loss_fn(img @ cap.t(), batch.image_ids)
    ce_i = torch.nn.functional.cross_entropy(model.classifier(torch.relu(img_raw)), batch.image_ids)
    ce_t = torch.nn.functional.cross_entropy(model.classifier(torch.relu(cap_raw)), batch.image_ids)
    assert total.item() == pytest.approx((2.0 * rank + ce_i + 0.5 * ce_t).item(), rel=1e-5)


def test_instance_classes_minus_one_becomes_the_number_of_training_images(tmp_path):
    cfg = tiny_config("model.instance_classes=-1", "loss.instance_image_weight=1.0", "loss.instance_text_weight=1.0", "epochs=1")
    res = train(cfg, tmp_path / "run", progress_stream=None)
    assert res.model.classifier.weight.shape == (400, 64)
    from vsekit.checkpoint import config_from_checkpoint, read_checkpoint

    assert config_from_checkpoint(read_checkpoint(tmp_path / "run")).model.instance_classes == 400
    again = train(cfg, tmp_path / "run", progress_stream=None)  # resuming a finished run is accepted
    assert again.best_epoch == res.best_epoch


def test_order_similarity_matches_the_official_formula():
    torch.manual_seed(0)
    im, s = torch.rand(70, 6), torch.rand(9, 6)
    ymx = s.unsqueeze(1).expand(9, 70, 6) - im.unsqueeze(0).expand(9, 70, 6)
    official = -ymx.clamp(min=0).pow(2).sum(2).sqrt().t()
    assert torch.allclose(order_similarity(im, s, chunk=16), official, atol=1e-6)
    # hand-computed: image (1, 1), caption (2, 0.5) -> -||(1, 0)|| = -1
    assert order_similarity(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.5]])).item() == pytest.approx(-1.0)


def test_grid_size_augmentation_rates():
    torch.manual_seed(0)
    feats = torch.arange(4000 * 50, dtype=torch.float32).reshape(4000, 50, 1)
    lengths = torch.full((4000,), 50)
    out, new_lengths = drop_grid_elements(feats, lengths, 0.2)
    dropped = 1 - new_lengths.float() / 50
    untouched = (new_lengths == 50).float().mean().item()
    # 20% of the sets are untouched (plus a few with no draw below the rate); the mean rate is
    # 0.8 * E[0.2 u | u > 0.2] = 0.8 * 0.12 = 0.096
    assert 0.2 <= untouched <= 0.26
    assert dropped.mean().item() == pytest.approx(0.096, abs=0.006)
    # the per-set rate is at most 0.2: even the tail stays near Binomial(50, 0.2)'s (P[X >= 18] < 0.3%)
    assert (dropped >= 18 / 50).float().mean().item() < 0.003
    # kept elements stay in order at the front
    for b in range(5):
        kept = out[b, : new_lengths[b], 0]
        assert torch.all(kept[1:] > kept[:-1])


def test_compute_loss_masks_captions_that_read_the_same():
    from vsekit.data import Collator, make_synthetic
    from vsekit.losses import ContrastiveLoss, caption_text_ids

    cfg = tiny_config("loss.negatives=softmax", "loss.same_text_positives=true", "model.image.size_augment=0.0",
                      "model.text.augment=0.0")  # fmt: skip
    ds = make_synthetic(num_train=40, num_val=0, num_test=0, captions_per_image=5)["train"]
    torch.manual_seed(0)
    model = create_model(cfg.model, Vocabulary.from_words(w for c in ds.captions() for w in c.split())).eval()
    picked = [0, 7, 13, 30, 41]
    batch = Collator(model.tokenizer, model.image_input)([ds[j] for j in picked])
    text_ids = torch.arange(len(ds))
    text_ids[41] = text_ids[7]  # caption 41 (image 8) reads like caption 7 (image 1)
    loss_fn = ContrastiveLoss.from_config(cfg.loss)
    total = compute_loss(model, batch, loss_fn, cfg, "fp32", text_ids=text_ids)
    sims = model.forward_image(batch.images, batch.image_lengths) @ model.forward_text(batch.captions, batch.caption_lengths).t()
    mask = torch.eye(5, dtype=torch.bool)
    mask[1, 4] = mask[4, 1] = True
    assert total.item() == pytest.approx(triplet_hinge_loss(sims, 0.2, "softmax", positives_mask=mask).item(), rel=1e-5)
    assert total.item() != pytest.approx(triplet_hinge_loss(sims, 0.2, "softmax").item(), rel=1e-5)
    with pytest.raises(ValueError, match="same_text_positives needs the text ids"):
        compute_loss(model, batch, loss_fn, cfg, "fp32")
    assert caption_text_ids(ds.captions()).shape == (len(ds),)
