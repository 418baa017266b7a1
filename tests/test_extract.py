"""`vsekit extract`: backbone grid features stored once, in the precomputed layout, resumable."""

from __future__ import annotations

import json
import os
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


def _reference(backbone, paths, size, turn=None):
    """Plain per-image reference: PIL decode, the test transform (then ``turn`` of the network input), one
    forward pass per image."""
    from vsekit.backbones import create_backbone
    from vsekit.data.images import PixelInput, load_image

    net = create_backbone(backbone, pretrained=True).eval()
    pix = PixelInput(size, net.input_mean, net.input_std)
    out = []
    with torch.no_grad():
        for p in paths:
            x, _ = pix.collate([load_image(p)], train=False)
            out.append(net(turn(x) if turn else x)[0].flatten(1).t().numpy())
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

    # a truncated feature file (a copy cut short) is a one-line error naming it, as for precomp folders
    whole = (out / "test_ims.npy").read_bytes()
    (out / "test_ims.npy").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"test_ims.npy: not a readable .npy array"):
        build_dataset(DataConfig(kind="karpathy", path=str(ann), features=str(out)), "test")


def test_lite0_extraction_matches_the_unfolded_backbone(tmp_path):
    """The extraction runs EfficientNet-Lite0 in its folded inference form; the stored grids equal the plain
    backbone's, one image at a time, for the image and for a view (non-square images, resized to 96 px)."""
    from vsekit.extract import extract_features

    ann, root = _karpathy(tmp_path, n_train=3, n_test=0)
    out = tmp_path / "feats"
    # on the CPU, as the reference: cuDNN's TF32 convolutions would be up to 0.03 off (seen on an H200)
    extract_features(ann, root, out, splits=["train"], image_size=96, batch_size=2, views=["transpose"],
                     device="cpu", progress_stream=None)  # fmt: skip
    paths = [root / f"im{i}.png" for i in range(3)]
    for view, turn in ((None, None), ("transpose", lambda x: x.transpose(2, 3))):
        ref = _reference("efficientnet_lite0", paths, 96, turn)
        got = np.load(out / ("train_ims.npy" if view is None else f"train_ims.{view}.npy")).astype(np.float32)
        assert got.shape == (3, 9, 1280)
        np.testing.assert_allclose(got, ref, rtol=2e-3, atol=4e-3)  # float16 storage of values up to 6


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
    for corrupt in ('{"splits": {"test": ', "[1, 2]", '{"splits": 3}'):  # a torn or foreign features.json: one line
        (tmp_path / "o" / "features.json").write_text(corrupt)
        with pytest.raises(DataError, match=r"o/features.json: .*delete it to extract again"):
            extract_features(ann, root, tmp_path / "o", splits=["test"], backbone="tiny", image_size=64, progress_stream=None)
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


class _MeanModel:
    """A stand-in model for the view averaging: an image embeds as the normalised mean of its regions."""

    class config:  # noqa: N801 - mirrors VSEModel.config's fields that encode_dataset reads
        embed_size = 4

        class image:  # noqa: N801
            normalize = True

    def encode_image(self, images, batch_size=256):
        return torch.nn.functional.normalize(torch.stack([torch.from_numpy(x).mean(0)[:4] for x in images]), dim=-1)

    def encode_text(self, texts, batch_size=256):
        return torch.ones(len(texts), 4)


def test_views_are_the_symmetries_of_a_square():
    """Hand-written: the 3×3 image 0..8 (row-major) under each view; with the image itself, the eight
    distinct symmetries of a square (rotations counter-clockwise)."""
    from vsekit.data.views import VIEWS

    want = {
        "rot90": [[2, 5, 8], [1, 4, 7], [0, 3, 6]],
        "rot180": [[8, 7, 6], [5, 4, 3], [2, 1, 0]],
        "rot270": [[6, 3, 0], [7, 4, 1], [8, 5, 2]],
        "hflip": [[2, 1, 0], [5, 4, 3], [8, 7, 6]],
        "vflip": [[6, 7, 8], [3, 4, 5], [0, 1, 2]],
        "transpose": [[0, 3, 6], [1, 4, 7], [2, 5, 8]],
        "antitranspose": [[8, 5, 2], [7, 4, 1], [6, 3, 0]],
    }
    image = torch.arange(9.0).view(1, 1, 3, 3).expand(2, 3, 3, 3)
    assert set(VIEWS) == set(want)
    for name, grid in want.items():
        got = VIEWS[name](image)
        assert got.shape == image.shape and (got == torch.tensor(grid, dtype=torch.float32)).all(), name


def test_views_are_the_transformed_images_and_average_at_evaluation(tmp_path):
    from vsekit.config import DataConfig, TrainConfig
    from vsekit.configure import validate
    from vsekit.data.factory import build_dataset
    from vsekit.evaluation.retrieval import encode_dataset
    from vsekit.extract import extract_features

    ann, root = _karpathy(tmp_path)
    out = tmp_path / "feats"
    kw = dict(backbone="tiny", image_size=64, batch_size=2, progress_stream=None)
    extract_features(ann, root, out, splits=["train", "test"], **kw)
    meta = extract_features(ann, root, out, splits=["test"], views=["rot90", "hflip"], **kw)
    assert meta["timing"]["test"]["skipped"] and meta["timing"]["test.rot90"]["images"] == 3
    saved = json.loads((out / "features.json").read_text())["splits"]["test"]["views"]
    assert set(saved) == {"rot90", "hflip"} and saved["rot90"]["images"] == 3
    assert not list(out.glob("*.partial")) and not list(out.glob("*.progress.json"))
    # each view is the backbone on the transformed network input
    paths = [root / f"im{i}.png" for i in (5, 6, 7)]
    for view, turn in (("rot90", lambda x: x.rot90(1, (2, 3))), ("hflip", lambda x: x.flip(3))):
        ref = _reference("tiny", paths, 64, turn)
        np.testing.assert_allclose(np.load(out / f"test_ims.{view}.npy").astype(np.float32), ref, rtol=2e-3, atol=2e-3)
        assert not np.allclose(ref, _reference("tiny", paths, 64), atol=1e-2)
    again = extract_features(ann, root, out, splits=["test"], views=["rot90"], **kw)
    assert again["timing"]["test.rot90"]["skipped"]
    with pytest.raises(ConfigError, match="views: unknown view 'rot45'"):
        extract_features(ann, root, out, splits=["test"], views=["rot45"], **kw)

    # evaluation averages the embeddings over the plain image and its views; training data never has views
    data = DataConfig(kind="karpathy", path=str(ann), features=str(out), eval_views=["rot90", "hflip"])
    test = build_dataset(data, "test", evaluation=True)
    assert set(test.views) == {"rot90", "hflip"} and build_dataset(data, "test").views == {}
    img, _ = encode_dataset(_MeanModel(), test)
    model = _MeanModel()
    plain = model.encode_image([test.image(i) for i in range(3)])
    views = [model.encode_image([np.load(out / f"test_ims.{v}.npy")[i].astype(np.float32) for i in range(3)]) for v in ("rot90", "hflip")]
    torch.testing.assert_close(img, torch.nn.functional.normalize((plain + views[0] + views[1]) / 3, dim=-1))
    assert not torch.allclose(img, plain, atol=1e-3)
    with pytest.raises(DataError, match=r"train_ims.rot90.npy: view file not found .*--views rot90"):
        build_dataset(data, "train", evaluation=True)
    bad = TrainConfig(data=DataConfig(kind="karpathy", path=str(ann), features=str(out), eval_views=["rot45"]))
    with pytest.raises(ConfigError, match="data.eval_views: unknown view 'rot45'"):
        validate(bad)
    bad.data = DataConfig(kind="synthetic", eval_views=["rot90"])
    with pytest.raises(ConfigError, match="data.eval_views: only for data.kind='karpathy'"):
        validate(bad)


def test_eval_cli_averages_over_the_views_of_the_checkpoint_or_the_flag(tmp_path):
    from .conftest import tiny_config
    from vsekit.checkpoint import model_from_checkpoint, read_checkpoint
    from vsekit.config import DataConfig
    from vsekit.data.factory import build_dataset
    from vsekit.evaluation.retrieval import similarity_matrix
    from vsekit.training import train

    ann, root = _karpathy(tmp_path)
    feats = tmp_path / "f"
    cmd = [sys.executable, "-m", "vsekit", "extract", str(ann), str(root), str(feats), "--splits", "train,test",
           "--backbone", "tiny", "--image-size", "64", "--quiet", "--views", "rot180"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "test.rot180: 3 images" in r.stdout and (feats / "test_ims.rot180.npy").is_file()
    channels = np.load(feats / "test_ims.npy", mmap_mode="r").shape[2]
    cfg = tiny_config("epochs=1", "data.kind=karpathy", f"data.path={ann}", f"data.features={feats}", "data.val_split=test",
                      "data.val_max_images=null", "data.vocab_min_count=1", f"model.image.img_dim={channels}", "batch_size=4",
                      "data.eval_views=[rot180]")  # fmt: skip
    train(cfg, run_dir=tmp_path / "run", progress_stream=None)
    model = model_from_checkpoint(read_checkpoint(tmp_path / "run" / "best.pt")).eval()
    data = DataConfig(kind="karpathy", path=str(ann), features=str(feats))
    expected = {}
    for views in ([], ["rot180"]):
        data.eval_views = views
        expected[bool(views)] = similarity_matrix(model, build_dataset(data, "test", evaluation=True))
    assert not np.allclose(expected[True], expected[False], atol=1e-4)
    base = [sys.executable, "-m", "vsekit", "eval", str(tmp_path / "run"), "--split", "test", "--device", "cpu"]
    for flag, views in (([], True), (["--eval-views", ""], False), (["--eval-views", "rot180"], True)):
        out = tmp_path / "sims.npy"
        r = subprocess.run([*base, *flag, "--save-sims", str(out)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        np.testing.assert_allclose(np.load(out), expected[views], atol=1e-5)
    r = subprocess.run([*base, "--eval-views", "rot45"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "data.eval_views: unknown view 'rot45'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_train_views_draw_the_image_or_a_view_uniformly_and_reproducibly(tmp_path):
    from vsekit.config import DataConfig
    from vsekit.data.factory import build_dataset
    from vsekit.extract import extract_features

    ann, root = _karpathy(tmp_path)
    out = tmp_path / "feats"
    extract_features(ann, root, out, splits=["train"], views=["rot90", "hflip"], backbone="tiny", image_size=64,
                     progress_stream=None)  # fmt: skip
    data = DataConfig(kind="karpathy", path=str(ann), features=str(out), train_views=["rot90", "hflip"])
    train = build_dataset(data, "train")
    assert train.draw_views and not build_dataset(data, "train", evaluation=True).views  # eval_views is separate
    with pytest.raises(DataError, match=r"train_ims.rot270.npy: view file not found \(data.train_views;"):
        build_dataset(DataConfig(kind="karpathy", path=str(ann), features=str(out), train_views=["rot270"]), "train")
    choices = [np.load(out / name)[2].astype(np.float32) for name in ("train_ims.npy", "train_ims.rot90.npy", "train_ims.hflip.npy")]

    def draws(seed):
        torch.manual_seed(seed)
        picked = []
        for _ in range(300):
            x = train.image(2)
            picked.append(next(c for c, ref in enumerate(choices) if np.array_equal(x, ref)))  # always one of the three
        return picked

    first = draws(0)
    counts = np.bincount(first, minlength=3)
    assert counts.min() > 70, counts  # uniform: 100 each expected
    assert draws(0) == first and draws(1) != first  # the global torch RNG decides (a resumed run draws the same)
    item = train[2 * 5]  # a training item reads its image through the same draw
    assert any(np.array_equal(item["image"], c) for c in choices)


def test_encode_karpathy_with_features_indexes_the_evaluated_embeddings(tmp_path):
    """`vsekit encode JSON --features DIR`: a feature model's index of a Karpathy JSON holds the embeddings that
    evaluation scores (averaged over the checkpoint's eval_views), under the image files' ids and paths."""
    from .conftest import tiny_config
    from vsekit.checkpoint import save_checkpoint
    from vsekit.config import DataConfig
    from vsekit.data import build_vocab
    from vsekit.data.factory import build_dataset
    from vsekit.evaluation.retrieval import encode_dataset
    from vsekit.extract import extract_features
    from vsekit.index import Index
    from vsekit.models import create_model

    ann, root = _karpathy(tmp_path)
    feats = tmp_path / "f"
    extract_features(ann, root, feats, splits=["train", "test"], views=["rot180"], backbone="tiny", image_size=64,
                     batch_size=4, progress_stream=None)  # fmt: skip
    channels = np.load(feats / "test_ims.npy", mmap_mode="r").shape[2]
    cfg = tiny_config("data.kind=karpathy", f"data.path={ann}", f"data.features={feats}", f"model.image.img_dim={channels}",
                      "data.eval_views=[rot180]")  # fmt: skip
    torch.manual_seed(0)
    model = create_model(cfg.model, build_vocab([f"picture number {i} caption {c}" for i in range(8) for c in range(5)], min_count=1))
    save_checkpoint(tmp_path / "m.pt", model, cfg)
    model.eval()
    data = DataConfig(kind="karpathy", path=str(ann), features=str(feats))
    evaluated = {}
    for views in ([], ["rot180"]):
        data.eval_views = views
        evaluated[bool(views)] = encode_dataset(model, build_dataset(data, "test", evaluation=True))[0].numpy()
    assert not np.allclose(evaluated[True], evaluated[False], atol=1e-4)

    base = [sys.executable, "-m", "vsekit", "encode", str(tmp_path / "m.pt"), str(ann), "--features", str(feats), "--image-root",
            str(root), "--quiet"]  # fmt: skip
    r = subprocess.run([*base, "--split", "test", "--out", str(tmp_path / "idx")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    idx = Index.load(tmp_path / "idx")
    st = idx.stats()
    assert (st["num_images"], st["num_texts"], st["views"], st["source_kind"]) == (3, 15, ["rot180"], "karpathy")
    for row, name in enumerate(("im5.png", "im6.png", "im7.png")):
        assert idx.item(name)["path"] == name and idx.resolve_path(name) == root / name
        np.testing.assert_allclose(idx.embedding(name), evaluated[True][row], atol=1e-5)
    assert idx.item("im6.png#2")["caption"] == "picture number 6 caption 2"

    # --views none embeds the plain features; the same views again embed nothing; other views re-embed
    r = subprocess.run([*base, "--split", "test", "--views", "none", "--out", str(tmp_path / "plain")], capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(Index.load(tmp_path / "plain").embedding("im7.png"), evaluated[False][2], atol=1e-5)
    again = Index.build(tmp_path / "m.pt", ann, tmp_path / "idx", features=feats, image_root=root, split="test", progress=False)
    assert again.meta["encoded"] == {"images": 0, "texts": 0}
    view_file = feats / "test_ims.rot180.npy"  # a view written again is embedded again
    os.utime(view_file, ns=(view_file.stat().st_atime_ns, view_file.stat().st_mtime_ns + 10**9))
    touched = Index.build(tmp_path / "m.pt", ann, tmp_path / "idx", features=feats, image_root=root, split="test", progress=False)
    assert touched.meta["encoded"] == {"images": 3, "texts": 0}
    redone = Index.build(tmp_path / "m.pt", ann, tmp_path / "idx", features=feats, image_root=root, split="test", views=[],
                         progress=False)  # fmt: skip
    assert redone.meta["encoded"]["images"] == 3 and redone.stats()["views"] == []
    np.testing.assert_allclose(redone.embedding("im5.png"), evaluated[False][0], atol=1e-5)

    # without --split: every split that has features; a missing picture is indexed without a path
    (root / "im1.png").unlink()
    both = Index.build(tmp_path / "m.pt", ann, tmp_path / "both", features=feats, image_root=root, progress=False)
    assert both.stats()["num_images"] == 8 and both.item("im1.png")["path"] is None and both.item("im2.png")["path"] == "im2.png"

    # one-line errors naming the file or option
    cases = [
        (["--split", "test", "--views", "rot90"], "test_ims.rot90.npy: view file not found"),
        (["--split", "val"], "no images with split 'val'"),
        (["--features", str(tmp_path / "images")], "no {split}_ims.npy file for any split of dataset.json"),
        (["--split", "train", "--features", str(tmp_path / "images")], "train_ims.npy"),
    ]
    for flags, message in cases:
        r = subprocess.run([*base, *flags, "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    records = json.loads(ann.read_text())
    records["images"].append({"filename": "im9.png", "split": "test", "sentences": [{"raw": "one more"}] * 5})
    longer = tmp_path / "longer.json"
    longer.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"test_ims.npy: 3 feature rows for the 4 'test' images of longer.json"):
        Index.build(tmp_path / "m.pt", longer, tmp_path / "bad", features=feats, image_root=root, progress=False)
    with pytest.raises(ConfigError, match="features: only applies to Karpathy JSON sources"):
        Index.build(tmp_path / "m.pt", feats, tmp_path / "bad", features=feats, progress=False)
    # without --features, this feature model turns the JSON's photos into features with the extractor of its
    # data.features folder, and views apply to them too
    photos = Index.build(tmp_path / "m.pt", ann, tmp_path / "photos", image_root=root, views=["rot90"], progress=False)
    assert photos.stats()["views"] == ["rot90"] and photos.meta["collection"]["extractor"]["backbone"] == "tiny"


def test_feature_index_takes_image_files_as_queries(tmp_path):
    """An index of a feature model over `vsekit extract` features records their extractor; a query image then
    gets the features its stored row has (same backbone, preprocessing, views and float16 rounding), averaged
    over the index's views as the indexed images are, so an indexed image finds itself."""
    from PIL import Image

    from .conftest import tiny_config
    from vsekit.checkpoint import save_checkpoint
    from vsekit.data import build_vocab, write_precomp
    from vsekit.extract import FeatureExtractor, extract_features
    from vsekit.index import Index
    from vsekit.models import create_model

    ann, root = _karpathy(tmp_path, n_train=0, n_test=6)
    feats = tmp_path / "f"
    extract_features(ann, root, feats, splits=["test"], views=["rot180"], backbone="tiny", image_size=64, batch_size=4,
                     progress_stream=None)  # fmt: skip
    stored = np.load(feats / "test_ims.npy").astype(np.float32)
    meta = json.loads((feats / "features.json").read_text())
    extractor = FeatureExtractor.from_metadata(meta, "features.json")
    plain, turned = extractor([root / "im4.png", np.array(Image.open(root / "im1.png"))], views=[None, "rot180"])
    np.testing.assert_allclose(plain, stored[[4, 1]], rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(turned, np.load(feats / "test_ims.rot180.npy")[[4, 1]].astype(np.float32), rtol=2e-3, atol=1e-3)
    assert not np.allclose(plain, turned, atol=1e-2)

    cfg = tiny_config(f"model.image.img_dim={stored.shape[2]}", "data.eval_views=[rot180]")
    torch.manual_seed(0)
    model = create_model(cfg.model, build_vocab([f"picture number {i} caption {c}" for i in range(6) for c in range(5)], min_count=1))
    save_checkpoint(tmp_path / "m.pt", model, cfg)
    idx = Index.build(tmp_path / "m.pt", ann, tmp_path / "idx", features=feats, image_root=root, progress=False)
    assert idx.stats()["views"] == ["rot180"] and idx.meta["collection"]["extractor"]["backbone"] == "tiny"
    names = [f"im{i}.png" for i in range(6)]
    queries = [root / "im2.png", str(root / "im3.png"), (root / "im5.png").read_bytes(), Image.open(root / "im0.png"),
               stored[1]]  # fmt: skip  (the last: a K×D feature array, embedded as it is, without views)
    embedded = idx.embed_images(queries)
    for row, name in zip(embedded[:4], ("im2.png", "im3.png", "im5.png", "im0.png")):
        np.testing.assert_allclose(row, idx.embedding(name), atol=2e-3)
    np.testing.assert_allclose(embedded[4], model.eval().encode_image(stored[1:2])[0].numpy(), atol=1e-5)
    for name in names:
        assert idx.search(image=root / name, k=1)[0].id == name
    assert idx.search_batch(images=[root / "im4.png", stored[4]], k=1)[0][0].id == "im4.png"

    # from the command line, as a user searches with a photo
    r = subprocess.run([sys.executable, "-m", "vsekit", "search", str(tmp_path / "idx"), "--image", str(root / "im3.png"),
                        "-k", "2", "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["id"] == "im3.png"

    # and from the search page's upload (HTTP)
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vsekit.serving import create_app

    with TestClient(create_app(idx), base_url="http://localhost") as client:
        r = client.post("/api/search", files={"image": ("q.png", (root / "im5.png").read_bytes(), "image/png")}, data={"k": "1"})
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == "im5.png", r.text

    # an index written before the extractor was recorded: a one-line error, and encoding again records it
    # without embedding anything again
    old = json.loads((tmp_path / "idx" / "index.json").read_text())
    del old["collection"]["extractor"]
    (tmp_path / "idx" / "index.json").write_text(json.dumps(old))
    with pytest.raises(DataError, match="run its 'vsekit encode' again"):
        Index.load(tmp_path / "idx").search(image=root / "im1.png")
    again = Index.build(tmp_path / "m.pt", ann, tmp_path / "idx", features=feats, image_root=root, progress=False)
    assert again.meta["encoded"] == {"images": 0, "texts": 0} and again.search(image=root / "im1.png", k=1)[0].id == "im1.png"

    # without features.json (a precomp folder) the index cannot make features: a one-line error, arrays still work
    write_precomp(tmp_path / "pre", "test", stored, [f"caption {i}" for i in range(6 * 5)])
    pre = Index.build(tmp_path / "m.pt", tmp_path / "pre", tmp_path / "idx_pre", views=[], progress=False)
    assert pre.meta["collection"]["extractor"] is None and pre.feature_extractor() is None
    with pytest.raises(DataError, match="does not record how they were made"):
        pre.search(image=root / "im1.png")
    assert pre.search(image=stored[3], k=1)[0].id == "test/3"
    # metadata that this version cannot reproduce is refused, naming where it came from
    with pytest.raises(ConfigError, match="features.json: not vsekit feature metadata"):
        FeatureExtractor.from_metadata({**meta, "format": "other"}, "features.json")
    with pytest.raises(ConfigError, match="f.json: preprocessing .* is not this vsekit version's for tiny"):
        FeatureExtractor.from_metadata({**meta, "preprocessing": {**meta["preprocessing"], "mean": [0, 0, 0]}}, "f.json")
    with pytest.raises(ConfigError, match="f.json: backbone 'nope'"):
        FeatureExtractor.from_metadata({**meta, "backbone": "nope"}, "f.json")


def test_a_rerun_removes_the_temporaries_a_killed_run_left(tmp_path):
    """Found by tests/test_chaos.py: a kill while writing a progress file left ``.train.progress.json.<random>.tmp``."""
    from vsekit.extract import extract_features

    ann, root = _karpathy(tmp_path, n_train=3, n_test=1)
    out = tmp_path / "feats"
    out.mkdir()
    stale = [out / ".train.progress.json.k1l2d.tmp", out / ".features.json.x9y8z.tmp"]
    for f in stale:
        f.write_text("{")
    (out / ".notes.txt.abc.tmp").write_text("not ours")
    extract_features(ann, root, out, splits=["train"], backbone="tiny", image_size=32, progress_stream=None)
    assert not any(f.exists() for f in stale) and (out / ".notes.txt.abc.tmp").exists()


def test_a_feature_model_indexes_photos_with_its_recorded_extractor(tmp_path):
    """`vsekit encode MODEL PHOTOS` for a model trained on `vsekit extract` features: training records the extractor
    in the checkpoint, and the index of the photos equals the one of the extracted features (same backbone,
    preprocessing, float16 rounding and views), with the photo files' size and mtime."""
    import shutil

    from .conftest import tiny_config
    from vsekit.checkpoint import read_checkpoint
    from vsekit.extract import extract_features
    from vsekit.index import Index
    from vsekit.training import train

    ann, root = _karpathy(tmp_path, n_train=8, n_test=6)
    feats = tmp_path / "f"
    extract_features(ann, root, feats, splits=["train", "test"], views=["rot180"], backbone="tiny", image_size=64,
                     batch_size=4, progress_stream=None)  # fmt: skip
    dim = int(np.load(feats / "test_ims.npy", mmap_mode="r").shape[2])
    cfg = tiny_config(f"model.image.img_dim={dim}", "data.kind=karpathy", f"data.path={ann}", f"data.features={feats}",
                      "data.val_split=test", "data.test_split=test", "data.eval_views=[rot180]", "data.vocab_min_count=1",
                      "data.val_max_images=null", "epochs=1", "batch_size=4")  # fmt: skip
    train(cfg, tmp_path / "run", progress_stream=None)
    recorded = read_checkpoint(tmp_path / "run" / "best.pt")["extractor"]
    assert recorded["backbone"] == "tiny" and recorded["image_size"] == 64 and recorded["dtype"] == "float16"

    from_features = Index.build(tmp_path / "run", ann, tmp_path / "a", features=feats, image_root=root, split="test",
                                progress=False)  # fmt: skip
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8, 14):  # the test images, as a plain folder
        shutil.copy2(root / f"im{i}.png", photos / f"im{i}.png")
    from_photos = Index.build(tmp_path / "run", photos, tmp_path / "b", progress=False, batch_size=4)
    assert from_photos.meta["collection"]["extractor"] == recorded and from_photos.stats()["views"] == ["rot180"]
    for i in range(8, 14):
        name = f"im{i}.png"
        np.testing.assert_allclose(from_photos.embedding(name), from_features.embedding(name), atol=2e-3)
        item = from_photos.item(name)
        assert item["size"] == (photos / name).stat().st_size and item["mtime"] == (photos / name).stat().st_mtime_ns
    assert from_photos.search(image=photos / "im9.png", k=1)[0].id == "im9.png"
    again = Index.build(tmp_path / "run", photos, tmp_path / "b", progress=False)  # nothing new
    assert again.meta["encoded"]["images"] == 0
    from vsekit.index.folders import folder_is_indexed

    assert folder_is_indexed(photos, tmp_path / "b", tmp_path / "run")  # its keys carry the views: compared by file
    # the model alone takes the photos too (vsekit.load tells it the recorded extractor and views)
    import vsekit

    model = vsekit.load(tmp_path / "run")
    names = [f"im{i}.png" for i in range(8, 14)]
    direct = model.encode_image([photos / n for n in names], batch_size=2).numpy()
    np.testing.assert_allclose(direct, np.stack([from_photos.embedding(n) for n in names]), atol=1e-5)
    with pytest.raises(DataError, match="photos or feature arrays, not both"):
        model.encode_image([photos / names[0], np.zeros((4, dim), np.float32)])
    plain = Index.build(tmp_path / "run", photos, tmp_path / "b", progress=False, views=[])  # other views: embedded again
    assert plain.meta["encoded"]["images"] == 6 and plain.stats()["views"] == []

    # the command line, and a feature model that records no extractor: one line saying so
    r = subprocess.run([sys.executable, "-m", "vsekit", "encode", str(tmp_path / "run"), str(photos), "--out",
                        str(tmp_path / "c"), "--quiet"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and "6 images" in r.stdout, r.stderr
    bare = read_checkpoint(tmp_path / "run" / "best.pt")
    bare.pop("extractor")
    bare["config"]["data"]["features"] = str(tmp_path / "elsewhere")
    torch.save(bare, tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match="does not record how they were made"):
        Index.build(tmp_path / "bare.pt", photos, tmp_path / "d", progress=False)
    with pytest.raises(DataError, match="does not know how they were made"):
        vsekit.load(tmp_path / "bare.pt").encode_image([photos / names[0]])


def test_a_joined_split_is_assembled_from_its_extracted_parts_in_the_json_order(tmp_path):
    from vsekit.extract import extract_features

    ann, root = _karpathy(tmp_path)
    doc = json.loads(ann.read_text())
    for i, rec in enumerate(doc["images"]):  # the two splits interleaved in the file
        rec["split"] = "test" if i % 3 == 1 else "train"
    ann.write_text(json.dumps(doc))
    kw = dict(backbone="tiny", image_size=64, batch_size=2, progress_stream=None, views=["rot90"])
    out, direct = tmp_path / "feats", tmp_path / "direct"
    extract_features(ann, root, out, splits=["train", "test"], **kw)
    meta = extract_features(ann, root, out, splits=["train+test"], **kw)
    assert meta["timing"]["train+test"]["joined_from"] == ["train", "test"]
    assert meta["timing"]["train+test.rot90"]["joined_from"] == ["train", "test"]
    ref = extract_features(ann, root, direct, splits=["train+test"], **kw)
    assert "joined_from" not in ref["timing"]["train+test"]
    assert meta["splits"]["train+test"]["files"] == ref["splits"]["train+test"]["files"] == [f"im{i}.png" for i in range(8)]
    parts = {s: np.load(out / f"{s}_ims.rot90.npy") for s in ("train", "test")}
    rows = [parts["test"][i // 3] if i % 3 == 1 else parts["train"][i - (i + 1) // 3] for i in range(8)]
    np.testing.assert_array_equal(np.load(out / "train+test_ims.rot90.npy"), np.stack(rows))  # the parts' rows, moved
    for name in ("train+test_ims.npy", "train+test_ims.rot90.npy"):  # = a backbone pass over the joined split
        np.testing.assert_allclose(np.load(out / name).astype(np.float32), np.load(direct / name).astype(np.float32), rtol=2e-3, atol=2e-3)
    assert not list(out.glob("*.partial"))
    # the joined split is then resumed like any other: nothing is done again
    again = extract_features(ann, root, out, splits=["train+test"], **kw)
    assert again["timing"]["train+test"]["skipped"] and again["timing"]["train+test.rot90"]["skipped"]
