"""Typed configs: presets, files, overrides and their errors."""

from __future__ import annotations

import pytest

from vsekit.config import TrainConfig, apply_overrides, from_dict, to_dict
from vsekit.configure import load_config
from vsekit.errors import ConfigError
from vsekit.presets import get_preset, list_presets


def test_presets_match_the_papers():
    v = get_preset("vse_infty_region_bigru")
    assert (v.model.image.pooling, v.model.text.pooling) == ("gpo", "gpo")
    assert v.model.image.size_augment == 0.2 and v.model.text.augment == 0.2
    assert (v.loss.margin, v.loss.negatives, v.loss.warmup_epochs) == (0.2, "hardest", 1)
    assert (v.optim.lr, v.epochs, v.optim.lr_decay_epochs, v.optim.grad_clip, v.batch_size) == (5e-4, 25, [15], 2.0, 128)
    pp, p0 = get_preset("vsepp"), get_preset("vse0")
    assert (pp.loss.negatives, p0.loss.negatives) == ("hardest", "sum")
    assert pp.model.text.kind == "gru" and pp.optim.lr == 2e-4 and pp.epochs == 30
    assert set(list_presets()) >= {"vse_infty_region_bigru", "vsepp", "vse0", "demo_gpo", "demo_mean", "demo_max"}


def test_round_trip_through_dict():
    cfg = get_preset("vse_infty_region_bigru")
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_overrides_are_typed():
    cfg = apply_overrides(TrainConfig(), ["optim.lr=1e-3", "epochs=3", "model.image.mlp=false", "optim.lr_decay_epochs=[2, 4]"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.epochs == 3 and cfg.model.image.mlp is False and cfg.optim.lr_decay_epochs == [2, 4]
    cfg = apply_overrides(TrainConfig(), ["data.synthetic.num_train=50"])
    assert cfg.data.synthetic == {"num_train": 50}


@pytest.mark.parametrize(
    "override, needle",
    [("optim.lr=abc", "optim.lr"), ("epochs=1.5", "epochs"), ("nope=1", "nope"), ("model.image.mlp=3", "model.image.mlp"), ("epochs", "KEY=VALUE")],
)
def test_bad_overrides(override, needle):
    with pytest.raises(ConfigError, match=needle):
        apply_overrides(TrainConfig(), [override])


def test_file_with_preset_and_validation(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: demo_max\nepochs: 2\noptim:\n  lr: 0.01\n")
    cfg = load_config(f, overrides=["batch_size=16"])
    assert cfg.model.image.pooling == "max" and cfg.epochs == 2 and cfg.optim.lr == 0.01 and cfg.batch_size == 16
    f.write_text("loss:\n  negatives: most\n")
    with pytest.raises(ConfigError, match="loss.negatives"):
        load_config(f)
    f.write_text("modle: {}\n")
    with pytest.raises(ConfigError, match="modle"):
        load_config(f)
    f.write_text("data:\n  kind: precomp\n")
    with pytest.raises(ConfigError, match="data.path"):
        load_config(f)


def test_rsicd_presets_differ_only_where_their_names_say() -> None:
    """The RSICD pooling ablation compares like with like: same features, text encoder, schedule and seed."""

    def flat(name: str) -> dict:
        out = {}

        def walk(d, prefix=""):
            for k, v in d.items():
                if isinstance(v, dict) and k not in ("lr_mults", "freeze", "synthetic"):
                    walk(v, f"{prefix}{k}.")
                else:
                    out[prefix + k] = v

        walk(to_dict(get_preset(name)))
        return out

    base = flat("rsicd_vse_infty")
    expected = {
        "rsicd_mean": {"model.image.pooling": "mean", "model.text.pooling": "mean"},
        "rsicd_max": {"model.image.pooling": "max", "model.text.pooling": "max"},
        "rsicd_kmax": {"model.image.pooling": "kmax:5", "model.text.pooling": "kmax:2"},
        "rsicd_vsepp": {"model.image.pooling": "mean", "model.text.pooling": "mean", "loss.negatives": "hardest"},
        "rsicd_instance": {"model.instance_classes": -1, "loss.instance_image_weight": 1.0, "loss.instance_text_weight": 1.0},
    }
    for name, diff in expected.items():
        other = flat(name)
        changed = {k: other[k] for k in base if other[k] != base[k] and k != "name"}
        assert changed == diff, name
    assert base["model.image.img_dim"] == 1280 and base["data.kind"] == "karpathy" and base["data.path"] in ("", None)
    # the frozen-MiniLM recipe changes the text branch, the loss and the optimiser, never the image side or data
    frozen = flat("rsicd_minilm_frozen")
    same = [k for k in base if k.startswith(("model.image.", "data.", "model.embed_size", "batch_size", "eval_protocol"))]
    assert {k: frozen[k] for k in same} == {k: base[k] for k in same}
    assert (frozen["model.text.kind"], frozen["model.text.frozen"], frozen["loss.negatives"]) == ("transformer", True, "softmax")
    # the rotation recipe is the frozen-MiniLM one with max pooling and the 7 other symmetries of each image as
    # views in training and evaluation, nothing else
    rot = flat("rsicd_minilm_rot")
    symmetries = ["rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "antitranspose"]
    assert {k: rot[k] for k in frozen if rot[k] != frozen[k] and k != "name"} == {
        "model.image.pooling": "max", "model.text.pooling": "max",
        "data.train_views": symmetries, "data.eval_views": symmetries,
    }  # fmt: skip
    # the best recipe is the rotation recipe with the weight average, nothing else
    ema = flat("rsicd_minilm_rot_ema")
    assert {k: ema[k] for k in rot if ema[k] != rot[k] and k != "name"} == {"optim.ema_decay": 0.998}


def test_recipes_are_data_that_merge_onto_their_base(monkeypatch, tmp_path) -> None:
    from vsekit import presets

    # a child replaces what it names and keeps the rest of its base; a dict-valued field is replaced whole
    base, child = get_preset("dualpath_stage1"), get_preset("dualpath_stage2")
    assert child.model == base.model and child.data == base.data
    assert child.optim.freeze == {} and base.optim.freeze == {"image_encoder.backbone": -1}
    assert child.optim.lr_mults == {"text_encoder.embed": 1e-3, "image_encoder.backbone": 0.02}
    # every recipe resolves, and each call gives a fresh object
    for name in list_presets():
        assert get_preset(name) is not get_preset(name) and get_preset(name).name == name
    # mistakes in a recipe file are one-line errors that name the file and field
    recipes = {"a": {"description": "a", "base": "b", "config": {}}, "b": {"description": "b", "base": "a", "config": {}},
               "c": {"description": "c", "config": {"optim": {"lrr": 1}}}}  # fmt: skip
    monkeypatch.setattr(presets, "_recipes", lambda: recipes)
    with pytest.raises(ConfigError, match=r"recipes/a.yaml: its bases form a cycle \(a -> b -> a\)"):
        get_preset("a")
    with pytest.raises(ConfigError, match=r"recipes/c.yaml: config.optim.lrr: unknown field"):
        get_preset("c")


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model.text.kind=bigru", "model.text.frozen=true"], r"model.text.frozen: only kind 'transformer' has it, got kind 'bigru'"),
        (["model.text.kind=transformer", "model.text.word_dim=64", "model.text.transformer_path=x"], r"model.text.word_dim: only kinds 'bigru', 'gru', 'textcnn'"),
        (["model.text.kind=gru", "model.text.dropout=0.5", "model.text.pooling=last"], r"model.text.dropout: only kind 'textcnn'"),
        (["model.image.kind=precomp", "model.image.image_size=512"], r"model.image.image_size: only kinds 'backbone', 'cnn_global', 'dualpath_image'"),
        (["model.text.kind=gru"], r"model.text.pooling: kind 'gru' takes the last hidden state"),
        (["model.text.kind=transformer"], r"model.text.transformer_path: required"),
        (["model.text.pooling=sorted"], r"model.text.pooling"),
    ],
)
def test_each_encoder_family_checks_its_own_options(overrides, needle):
    """A family field set for a kind that does not read it is refused, naming the field and the kinds that have it."""
    with pytest.raises(ConfigError, match=needle):
        load_config(overrides=overrides)


def test_the_family_checks_accept_every_preset_and_a_family_own_options():
    for name in list_presets():
        load_config(preset=name, require_data=False)
    cfg = load_config(preset="demo_max", overrides=["model.text.kind=textcnn", "model.text.max_length=20", "model.text.dropout=0.5"])
    assert (cfg.model.text.max_length, cfg.model.text.dropout) == (20, 0.5)


@pytest.mark.parametrize("override", ["optim.lr=nan", "optim.lr=.inf", "loss.margin=nan", "optim.weight_decay=-.inf", "optim.lr_mults={x: .nan}"])
def test_non_finite_numbers_are_refused_with_the_field(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}(\.x)?: expected a (finite|non-negative|positive)? ?number"):
        load_config(preset="demo_max", overrides=[override])
