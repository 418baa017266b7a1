"""`vsekit extract`: backbone grid features stored once, in the precomputed layout, resumable."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vsekit.errors import ConfigError, DataError

pytest.importorskip("vsekit.backbones")


def _karpathy(tmp_path, n_train=5, n_test=3):
    """A Karpathy-style JSON with generated PNG images of two kinds (red disc / blue square)."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(n_train + n_test):
        img = (rng.random((40 + i, 48, 3)) * 60).astype(np.uint8)
        img[10:30, 10:30] = (200, 30, 30) if i % 2 else (30, 30, 200)
        Image.fromarray(img).save(root / f"im{i}.png")
        split = "train" if i < n_train else "test"
        records.append({"filename": f"im{i}.png", "split": split, "imgid": i,
                        "sentences": [{"raw": f"picture number {i} caption {c}"} for c in range(5)]})  # fmt: skip
    ann = tmp_path / "dataset.json"
    ann.write_text(json.dumps({"images": records}))
    return ann, root


def _reference(backbone, paths, size):
    """Plain per-image reference: PIL decode, the test transform, one forward pass per image."""
    from vsekit.backbones import create_backbone
    from vsekit.data.images import PixelInput, load_image

    net = create_backbone(backbone, pretrained=True).eval()
    pix = PixelInput(size, net.input_mean, net.input_std)
    out = []
    with torch.no_grad():
        for p in paths:
            x, _ = pix.collate([load_image(p)], train=False)
            out.append(net(x)[0].flatten(1).t().numpy())
    return np.stack(out)


def test_extract_matches_per_image_reference_and_feeds_training(tmp_path):
    from vsekit.extract import extract_features

    ann, root = _karpathy(tmp_path)
    out = tmp_path / "feats"
    meta = extract_features(ann, root, out, splits=["train", "test"], backbone="tiny", image_size=64, batch_size=2,
                            progress_stream=None)  # fmt: skip
    train = np.load(out / "train_ims.npy", mmap_mode="r")
    assert train.dtype == np.float16 and train.shape[0] == 5
    ref = _reference("tiny", [root / f"im{i}.png" for i in range(5)], 64)
    np.testing.assert_allclose(train.astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    saved = json.loads((out / "features.json").read_text())
    assert saved["backbone"] == "tiny" and saved["splits"]["test"]["files"] == ["im5.png", "im6.png", "im7.png"]
    assert meta["timing"]["train"]["images"] == 5
    assert not list(out.glob("*.partial")) and not list(out.glob("*.progress.json"))

    # the features feed the precomputed-feature path
    from vsekit.config import DataConfig
    from vsekit.data.factory import build_dataset

    ds = build_dataset(DataConfig(kind="karpathy", path=str(ann), features=str(out)), "test")
    assert ds.num_images == 3 and ds.image(0).shape == (train.shape[1], train.shape[2])


def test_interrupted_extraction_resumes(tmp_path):
    from vsekit.extract import extract_features

    ann, root = _karpathy(tmp_path, n_train=7, n_test=1)
    out = tmp_path / "feats"
    extract_features(ann, root, out, splits=["train"], backbone="tiny", image_size=64, batch_size=2, max_images=3,
                     progress_stream=None)  # fmt: skip
    state = json.loads((out / "train.progress.json").read_text())
    assert state["done"] == 3
    assert not (out / "train_ims.npy").exists() and (out / "train_ims.npy.partial").exists()
    second = extract_features(ann, root, out, splits=["train"], backbone="tiny", image_size=64, batch_size=2,
                              progress_stream=None)  # fmt: skip
    assert second["timing"]["train"]["images"] == 7 - state["done"]
    # the recorded extraction time covers both calls and is reported when a later call skips the split
    recorded = json.loads((out / "features.json").read_text())["splits"]["train"]["extract_seconds"]
    assert recorded >= second["timing"]["train"]["seconds"] + state["seconds"] - 0.01 and state["seconds"] > 0
    third = extract_features(ann, root, out, splits=["train"], backbone="tiny", image_size=64, progress_stream=None)
    assert third["timing"]["train"]["skipped"] and third["timing"]["train"]["recorded_seconds"] == recorded
    full = tmp_path / "full"
    extract_features(ann, root, full, splits=["train"], backbone="tiny", image_size=64, batch_size=2, progress_stream=None)
    # same rows as one uninterrupted run (batch composition differs, so float rounding may too)
    np.testing.assert_allclose(np.load(out / "train_ims.npy"), np.load(full / "train_ims.npy"), rtol=1e-3, atol=1e-3)


def test_extract_errors(tmp_path):
    from vsekit.extract import extract_features

    ann, root = _karpathy(tmp_path)
    with pytest.raises(DataError, match="image folder not found"):
        extract_features(ann, tmp_path / "nope", tmp_path / "o", backbone="tiny", progress_stream=None)
    with pytest.raises(ConfigError, match="dtype"):
        extract_features(ann, root, tmp_path / "o", backbone="tiny", dtype="int8", progress_stream=None)
    extract_features(ann, root, tmp_path / "o", splits=["test"], backbone="tiny", image_size=64, progress_stream=None)
    with pytest.raises(ConfigError, match="other settings"):
        extract_features(ann, root, tmp_path / "o", splits=["test"], backbone="tiny", image_size=96, progress_stream=None)
    (root / "im0.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="im0.png"):
        extract_features(ann, root, tmp_path / "o2", splits=["train"], backbone="tiny", image_size=64, progress_stream=None)


def test_extract_cli(tmp_path):
    ann, root = _karpathy(tmp_path)
    cmd = [sys.executable, "-m", "vsekit", "extract", str(ann), str(root), str(tmp_path / "f"), "--splits", "test",
           "--backbone", "tiny", "--image-size", "64", "--quiet"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "test: 3 images" in r.stdout and (tmp_path / "f" / "test_ims.npy").is_file()
    bad = subprocess.run(cmd[:5] + [str(tmp_path / "missing"), str(tmp_path / "g")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
