"""Raw images: file reading, the VSE∞ train/test transforms against plain PIL references, the image-folder
dataset (generated files and the shared RSICD data), and the rendered synthetic scenes."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vsekit.config import DataConfig
from vsekit.data import make_synthetic
from vsekit.data.factory import build_dataset
from vsekit.data.images import (
    Crop,
    KarpathyImageDataset,
    PixelInput,
    as_pixels,
    load_image,
)
from vsekit.data.render import COLOR_RGB, SHAPES, shape_mask
from vsekit.data.synthetic import COLORS, NOUNS
from vsekit.errors import ConfigError, DataError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (resampling noise-free content gives comparable resizes)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _reference(img: np.ndarray, size: int, crop: Crop | None = None) -> np.ndarray:
    """Plain per-image reference: PIL crop -> PIL bilinear resize -> flip -> /255 -> (x - mean) / std."""
    pil = Image.fromarray(img)
    if crop is not None:
        pil = pil.crop((crop.left, crop.top, crop.left + crop.width, crop.top + crop.height))
    pil = pil.resize((size, size), Image.BILINEAR)
    if crop is not None and crop.flip:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    x = np.asarray(pil, dtype=np.float64) / 255.0
    return ((x - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)


# --------------------------------------------------------------------------------------------------
# load_image / as_pixels


def test_load_image_modes(tmp_path):
    rgb = _smooth_image(20, 30, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png"), rgb)
    gray = rgb[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    out = load_image(str(tmp_path / "gray.png"))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgb)  # alpha dropped
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png").shape == (20, 30, 3)


def test_a_decompression_bomb_is_a_one_line_error(tmp_path, monkeypatch):
    """Pillow refuses images over twice MAX_IMAGE_PIXELS: vsekit extract and search --image get a DataError."""
    Image.fromarray(_smooth_image(64, 64, 2)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels > 2 × 1,000
    with pytest.raises(DataError, match=r"bomb.png: refused, the image is too large to decode safely"):
        load_image(tmp_path / "bomb.png")


def test_load_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_image(bad)
    with pytest.raises(DataError, match="not found.*missing.png"):
        load_image(tmp_path / "missing.png")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(_smooth_image(64, 64, 1)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match="truncated.png"):
        load_image(truncated)


def test_as_pixels_accepts_arrays_tensors_pil_and_paths(tmp_path):
    img = _smooth_image(10, 12, 2)
    Image.fromarray(img).save(tmp_path / "a.png")
    for item in (img, torch.from_numpy(img), Image.fromarray(img), tmp_path / "a.png", str(tmp_path / "a.png")):
        np.testing.assert_array_equal(as_pixels(item), img)
    assert as_pixels(img[:, :, 0]).shape == (10, 12, 3)
    with pytest.raises(DataError, match=r"images\[3\].*uint8"):
        as_pixels(img.astype(np.float32), 3)
    with pytest.raises(DataError, match="H×W×3"):
        as_pixels(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(DataError, match="got list"):
        as_pixels([1, 2, 3])


# --------------------------------------------------------------------------------------------------
# PixelInput


def test_test_transform_matches_pil_resize():
    images = [_smooth_image(60, 80, 0), _smooth_image(33, 47, 1), _smooth_image(60, 80, 2), _smooth_image(24, 24, 3)]
    spec = PixelInput(24, MEAN, STD)
    x, lengths = spec.collate(images, train=False)
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32
    assert lengths.tolist() == [1, 1, 1, 1] and lengths.dtype == torch.int64
    level = 1.0 / (255 * min(STD))  # one grey level after normalisation
    for i, img in enumerate(images):
        np.testing.assert_allclose(x[i].numpy(), _reference(img, 24), atol=level + 1e-5)
    # an image already at the target size is passed through exactly
    np.testing.assert_allclose(x[3].numpy(), _reference(images[3], 24), atol=1e-5)
    # reversed and read-only views (memory-mapped files, np.broadcast_to) work too
    mirrored = images[0][:, ::-1]
    frozen = images[1].copy()
    frozen.setflags(write=False)
    y, _ = spec.collate([mirrored, frozen, np.broadcast_to(images[3][:1], (24, 24, 3))])
    torch.testing.assert_close(y[0], x[0].flip(-1), rtol=0, atol=level + 1e-5)
    torch.testing.assert_close(y[1], x[1], rtol=0, atol=0)


def test_train_transform_matches_per_image_crop_resize_flip():
    images = [_smooth_image(90, 120, s) for s in range(6)]
    spec = PixelInput(32, MEAN, STD)
    crops = [Crop(0, 0, 90, 120, False), Crop(10, 20, 60, 80, True), Crop(30, 39, 55, 73, False),
             Crop(5, 7, 54, 72, True), Crop(33, 44, 56, 75, True), Crop(1, 2, 3, 4, False)]  # fmt: skip
    x = spec.transform(images, crops)
    level = 1.0 / (255 * min(STD))
    for img, crop, got in zip(images, crops, x):
        np.testing.assert_allclose(got.numpy(), _reference(img, 32, crop), atol=level + 1e-5)
    # collate(train=True) is sample_crops + transform under the same random state
    torch.manual_seed(5)
    a, _ = spec.collate(images, train=True)
    torch.manual_seed(5)
    b = spec.transform(images, spec.sample_crops([im.shape[:2] for im in images]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_crop_and_flip_distribution():
    spec = PixelInput(16)
    torch.manual_seed(0)
    h, w, n = 200, 300, 20000
    crops = spec.sample_crops([(h, w)] * n)
    ch = np.array([c.height for c in crops])
    cw = np.array([c.width for c in crops])
    top = np.array([c.top for c in crops])
    left = np.array([c.left for c in crops])
    # one ratio r ~ U[0.6, 1) for both sides (floored), crops inside the image
    assert ch.min() >= int(0.6 * h) and ch.max() <= h - 1 and cw.min() >= int(0.6 * w) and cw.max() <= w - 1
    assert np.all(np.abs(ch / h - cw / w) < 1.0 / h + 1e-9)
    assert (ch / h).mean() == pytest.approx(0.8, abs=0.005)
    assert np.all(top >= 0) and np.all(top + ch <= h) and np.all(left >= 0) and np.all(left + cw <= w)
    # positions are uniform over the free range: relative position mean 0.5, both ends reached
    assert (top / (h - ch)).mean() == pytest.approx(0.5, abs=0.01)
    assert ((top == 0).sum() > 0) and ((top == h - ch).sum() > 0)
    assert np.mean([c.flip for c in crops]) == pytest.approx(0.5, abs=0.015)
    # a flipped crop is the mirror of the unflipped one
    img = _smooth_image(50, 60, 9)
    a = spec.transform([img], [Crop(3, 4, 40, 48, False)])
    b = spec.transform([img], [Crop(3, 4, 40, 48, True)])
    torch.testing.assert_close(b, a.flip(-1))


def test_pixel_input_is_picklable_and_validates():
    spec = PixelInput(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    again = pickle.loads(pickle.dumps(spec))
    assert again.kind == "pixels" and again.image_size == 64 and again.mean == (0.5, 0.5, 0.5)
    img = np.full((64, 64, 3), 255, np.uint8)
    x, _ = again.collate([img])
    torch.testing.assert_close(x, torch.ones(1, 3, 64, 64))  # (1 - 0.5) / 0.5
    with pytest.raises(ConfigError, match="image_size"):
        PixelInput(0)
    with pytest.raises(ConfigError, match="std"):
        PixelInput(8, MEAN, (0.1, 0.0, 0.1))
    with pytest.raises(DataError, match="at least one"):
        spec.collate([])


# --------------------------------------------------------------------------------------------------
# KarpathyImageDataset


def _karpathy_folder(tmp_path, n=6):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    records = []
    for i in range(n):
        Image.fromarray(_smooth_image(20 + i, 30, i)).save(root / "sub" / f"im{i}.png")
        records.append({"filename": f"im{i}.png", "filepath": "sub", "split": "train" if i < 4 else "test",
                        "sentences": [{"raw": f"image {i} caption {c}"} for c in range(5)]})  # fmt: skip
    ann = tmp_path / "data.json"
    ann.write_text(json.dumps({"images": records}))
    return ann, root


def test_karpathy_image_dataset(tmp_path):
    ann, root = _karpathy_folder(tmp_path)
    ds = KarpathyImageDataset(ann, root, "train", captions_per_image=2)
    assert ds.image_kind == "pixels" and ds.num_images == 4 and len(ds) == 8
    assert ds.caption(3) == "image 1 caption 1"
    img = ds.image(2)
    assert img.shape == (22, 30, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, _smooth_image(22, 30, 2))
    item = ds[5]
    assert item["image_id"] == 2 and item["caption"] == "image 2 caption 1"
    # through the factory: data.images without data.features gives raw images; max_images keeps the kind
    cfg = DataConfig(kind="karpathy", path=str(ann), images=str(root))
    test = build_dataset(cfg, "test")
    assert test.image_kind == "pixels" and test.num_images == 2
    first = build_dataset(cfg, "train", max_images=3)
    assert first.image_kind == "pixels" and first.num_images == 3
    np.testing.assert_array_equal(first.image(2), img)


def test_karpathy_image_dataset_errors(tmp_path):
    ann, root = _karpathy_folder(tmp_path)
    (root / "sub" / "im1.png").unlink()
    with pytest.raises(DataError, match="im1.png"):
        KarpathyImageDataset(ann, root, "train")
    with pytest.raises(DataError, match="image folder not found"):
        KarpathyImageDataset(ann, tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match="'val'"):
        KarpathyImageDataset(ann, root, "val")
    (root / "sub" / "im5.png").write_bytes(b"garbage")
    ds = KarpathyImageDataset(ann, root, "test")
    with pytest.raises(DataError, match="im5.png"):
        ds.image(1)


def test_rsicd_images_through_the_dataset(rsicd):
    ds = KarpathyImageDataset(rsicd / "dataset_rsicd.json", rsicd / "images", "test")
    assert ds.num_images == 1093 and len(ds) == 5465
    images = [ds.image(i) for i in (0, 1, 1092)]
    for img in images:
        assert img.shape == (224, 224, 3) and img.dtype == np.uint8 and img.std() > 5
    x, _ = PixelInput(224).collate(images, train=True)
    assert x.shape == (3, 3, 224, 224) and torch.isfinite(x).all()
    cfg = DataConfig(kind="karpathy", path=str(rsicd / "dataset_rsicd.json"), images=str(rsicd / "images"))
    val = build_dataset(cfg, "val", max_images=10)
    assert val.image_kind == "pixels" and val.image(0).shape == (224, 224, 3)


# --------------------------------------------------------------------------------------------------
# rendered synthetic scenes


def _rendered(**overrides):
    kw = {"num_train": 60, "num_val": 0, "num_test": 0, "render": True, "image_size": 64, "seed": 1}
    kw.update(overrides)
    return make_synthetic(**kw)["train"]


def test_render_is_deterministic_and_keeps_the_captions():
    a, b = _rendered(), _rendered()
    assert a.image_kind == "pixels" and a.num_images == 60 and a.feature_dim == 3
    for i in (0, 17, 59):
        img = a.image(i)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, b.image(i))
        np.testing.assert_array_equal(img, a.image(i))
    assert not np.array_equal(a.image(0), a.image(1))
    assert not np.array_equal(a.image(0), _rendered(seed=2).image(0))
    # the captions are those of the feature version of the same scenes
    features = make_synthetic(num_train=60, num_val=0, num_test=0, seed=1)["train"]
    assert a.captions() == features.captions()
    assert _rendered(image_size=32).image(3).shape == (32, 32, 3)
    assert pickle.loads(pickle.dumps(a)).image(5).tobytes() == a.image(5).tobytes()


def test_rendered_objects_match_the_captions():
    # one object per scene: the whole shape is visible in its exact colour, and the captions name it
    ds = _rendered(num_train=200, min_objects=1, max_objects=1, num_categories=32, num_colors=10, p_color=1.0)
    nouns = {w for pair in NOUNS for w in pair}
    for i in range(ds.num_images):
        (obj,) = ds.objects(i)
        img = ds.image(i)
        mask = shape_mask(obj["category"], obj["side"])
        colour = np.array(COLOR_RGB[obj["color"]], np.uint8)
        painted = np.all(img == colour, axis=2)
        assert painted.sum() == mask.sum()
        box = painted[obj["top"] : obj["top"] + obj["side"], obj["left"] : obj["left"] + obj["side"]]
        np.testing.assert_array_equal(box, mask)
        for j in range(i * ds.captions_per_image, (i + 1) * ds.captions_per_image):
            words = ds.caption(j).split()
            assert NOUNS[obj["category"]][0] in words
            assert {w for w in words if w in nouns} == {NOUNS[obj["category"]][0]}
            assert COLORS[obj["color"]] in words and not {w for w in words if w in COLORS} - {COLORS[obj["color"]]}


def test_rendered_scenes_hold_their_objects():
    ds = _rendered(num_train=100, min_objects=2, max_objects=8)
    for i in range(ds.num_images):
        objects = ds.objects(i)
        assert 2 <= len(objects) <= 8
        sizes = [o["size"] for o in objects]
        assert sizes == sorted(sizes, reverse=True)  # large ones drawn first
        for o in objects:
            assert 0 <= o["top"] <= 64 - o["side"] and 0 <= o["left"] <= 64 - o["side"]
        last = objects[-1]  # drawn on top of everything: fully visible
        img = ds.image(i)
        box = img[last["top"] : last["top"] + last["side"], last["left"] : last["left"] + last["side"]]
        assert np.all(box[shape_mask(last["category"], last["side"])] == COLOR_RGB[last["color"]])


def test_shapes_are_distinct():
    masks = [shape_mask(c, 20) for c in range(2 * len(SHAPES))]
    for a in range(len(masks)):
        assert masks[a].sum() > 20
        for b in range(a):
            assert (masks[a] != masks[b]).sum() >= 10, (a, b)
    assert len(COLOR_RGB) == len(COLORS)


def test_render_config_errors_and_factory():
    with pytest.raises(ConfigError, match="synthetic.image_size"):
        _rendered(image_size=8)
    with pytest.raises(ConfigError, match="synthetic.render"):
        _rendered(render="yes")
    cfg = DataConfig(kind="synthetic", synthetic={"num_train": 30, "num_val": 20, "render": True, "image_size": 32})
    val = build_dataset(cfg, "val", max_images=10)
    assert val.image_kind == "pixels" and val.num_images == 10 and val.image(0).shape == (32, 32, 3)
