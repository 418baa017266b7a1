"""Tests of vsekit.data: tokenizer, vocabulary, datasets, Karpathy JSON, synthetic data, collation."""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vsekit.data import (
    Batch,
    CaptionDataset,
    Collator,
    FeatureCaptionDataset,
    ImageRecord,
    KarpathyJSON,
    PrecompDataset,
    SyntheticConfig,
    Vocabulary,
    build_vocab,
    captions_from_records,
    collate_captions,
    collate_images,
    make_synthetic,
    tokenize,
    write_precomp,
)
from vsekit.errors import ConfigError, DataError

RSICD = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "rsicd" / "dataset_rsicd.json"


# ----------------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("A red Car, next to a TREE.", ["a", "red", "car", "next", "to", "a", "tree"]),
        ("two  houses\tand\n3 boats!", ["two", "houses", "and", "3", "boats"]),
        ("well-known x-ray (b&w)", ["well", "known", "x", "ray", "b", "w"]),
        ("It's the city's river", ["it", "'s", "the", "city", "'s", "river"]),
        ("Don't stop; they can't", ["do", "n't", "stop", "they", "ca", "n't"]),
        ("I'm sure we're here, they've gone, you'll see, he'd go",
         ["i", "'m", "sure", "we", "'re", "here", "they", "'ve", "gone", "you", "'ll", "see", "he", "'d", "go"]),
        ("the river\u2019s bend", ["the", "river", "'s", "bend"]),
        ("'quoted' rivers' o'clock", ["quoted", "rivers", "o", "clock"]),
        ("", []),
        ("...!?", []),
        ("café naïve", ["caf", "na", "ve"]),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_tokenize_matches_plain_runs() -> None:
    text = "A 3-lane road, 12 cars & 2 trucks; some_underscore [x] 100%"
    assert tokenize(text) == re.findall(r"[a-z0-9]+", text.lower())


@pytest.mark.skipif(not RSICD.is_file(), reason="shared RSICD data not present")
def test_tokenize_matches_rsicd_tokens() -> None:
    data = json.loads(RSICD.read_text(encoding="utf-8"))
    sentences = [s for im in data["images"] for s in im["sentences"]][:200]
    assert len(sentences) == 200
    for s in sentences:
        assert tokenize(s["raw"]) == s["tokens"], s["raw"]


# ----------------------------------------------------------------------------------------------- vocabulary


def test_build_vocab_order_min_count_and_specials() -> None:
    caps = ["b a a", "a b c", "c c d", "b a"]  # a:4 b:3 c:3 d:1
    vocab = build_vocab(caps, min_count=2)
    assert vocab.idx2word == ["<pad>", "<start>", "<end>", "<unk>", "a", "b", "c", "<mask>"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.mask_id == len(vocab) - 1 == 7
    assert all(vocab.word2idx[w] == i for i, w in enumerate(vocab.idx2word))
    assert "d" not in vocab
    assert build_vocab(caps).idx2word == ["<pad>", "<start>", "<end>", "<unk>", "a", "<mask>"]


def test_encode_decode() -> None:
    vocab = build_vocab(["a red car"] * 4)
    ids = vocab.encode("A red boat!")
    assert ids == [1, vocab.word2idx["a"], vocab.word2idx["red"], vocab.unk_id, 2]
    assert vocab.decode(ids) == "a red <unk>"
    assert vocab.decode(torch.tensor(ids + [0, 0])) == "a red <unk>"
    assert vocab.encode("") == [1, 2]
    with pytest.raises(DataError, match="outside"):
        vocab.decode([len(vocab)])


def test_vocab_save_load_round_trip(tmp_path: Path) -> None:
    vocab = build_vocab(["the red car", "the blue car"] * 4)
    path = vocab.save(tmp_path / "sub" / "vocab.json")
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.word2idx == vocab.word2idx
    d = json.loads(path.read_text())
    assert d["format"] == "vsekit-vocab-1" and d["idx"] == len(vocab)
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    assert pickle.loads(pickle.dumps(vocab)) == vocab


def test_vocab_from_scan_dict(tmp_path: Path) -> None:
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "man", "."]
    scan = {"word2idx": {w: i for i, w in enumerate(words)}, "idx2word": {str(i): w for i, w in enumerate(words)},
            "idx": len(words)}
    path = tmp_path / "coco_precomp_vocab.json"
    path.write_text(json.dumps(scan))
    vocab = Vocabulary.load(path)
    assert vocab.idx2word == words + ["<mask>"]
    assert vocab.mask_id == 7 and vocab.word2idx["man"] == 5
    # A list idx2word and an existing <mask> are accepted as they are.
    assert Vocabulary.from_dict({"idx2word": words + ["<mask>"]}).idx2word == words + ["<mask>"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"idx2word": ["<pad>", "<start>", "<end>"]}), "missing special token"),
        (json.dumps({"idx2word": {"0": "<pad>", "2": "<start>"}}), "without gaps"),
        (json.dumps({"idx2word": ["<pad>", "<start>", "<end>", "<unk>", "a", "a"]}), "appears twice"),
        (json.dumps({"word2idx": {"<pad>": 0}, "idx2word": ["<pad>", "<start>", "<end>", "<unk>"]}), "does not match"),
        (json.dumps({"format": "other", "idx2word": []}), "format"),
        (json.dumps({"idx": 3}), "idx2word"),
    ],
)
def test_vocab_load_errors(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "v.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_vocab_load_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope.json"))):
        Vocabulary.load(tmp_path / "nope.json")


# ----------------------------------------------------------------------------------------------- precomp


def _caps(n: int, k: int) -> list[str]:
    return [f"caption {j} of image {j // k}" for j in range(n * k)]


def test_precomp_per_image_float16_memmap(tmp_path: Path) -> None:
    feats = np.random.default_rng(0).standard_normal((4, 3, 6)).astype(np.float16)
    write_precomp(tmp_path, "train", feats, _caps(4, 5))
    ds = PrecompDataset(tmp_path, "train")
    assert isinstance(ds, CaptionDataset)
    assert isinstance(ds.features, np.memmap)
    assert (ds.num_images, ds.captions_per_image, ds.feature_dim, len(ds)) == (4, 5, 6, 20)
    item = ds[13]
    assert item["image_id"] == 2 and item["caption_id"] == 13 and item["caption"] == "caption 13 of image 2"
    assert item["image"].dtype == np.float32 and item["image"].shape == (3, 6)
    assert not isinstance(item["image"], np.memmap)
    np.testing.assert_array_equal(item["image"], feats[2].astype(np.float32))
    assert ds.captions() == _caps(4, 5)
    assert ds[-1]["caption_id"] == 19
    with pytest.raises(IndexError):
        ds[20]
    # Pickling does not copy the mapped array and re-maps it.
    clone = pickle.loads(pickle.dumps(ds))
    assert isinstance(clone.features, np.memmap) and len(pickle.dumps(ds)) < feats.nbytes + 2000
    np.testing.assert_array_equal(clone.image(3), ds.image(3))


def test_precomp_captions_per_image_and_max_images(tmp_path: Path) -> None:
    feats = np.ones((6, 2, 3), dtype=np.float32)
    write_precomp(tmp_path, "dev", feats, _caps(6, 5))
    ds = PrecompDataset(tmp_path, "dev", captions_per_image=5, max_images=4)
    assert (ds.num_images, len(ds)) == (4, 20) and ds.captions() == _caps(4, 5)
    assert len(PrecompDataset(tmp_path, "dev", max_images=100)) == 30
    with pytest.raises(DataError, match="6 x 3 = 18"):
        PrecompDataset(tmp_path, "dev", captions_per_image=3)


def test_precomp_per_caption_rows(tmp_path: Path) -> None:
    # "10crop" style: one feature row per caption; image i is row i*k.
    feats = np.repeat(np.arange(4, dtype=np.float32), 5)[:, None, None] * np.ones((1, 2, 3), np.float32)
    write_precomp(tmp_path, "test", feats, _caps(4, 5))
    ds = PrecompDataset(tmp_path, "test")
    assert (ds.num_images, ds.captions_per_image, len(ds)) == (4, 5, 20)
    assert ds[17]["image_id"] == 3
    np.testing.assert_array_equal(ds[17]["image"], np.full((2, 3), 3.0, np.float32))
    assert PrecompDataset(tmp_path, "test", captions_per_image=2).num_images == 10
    one = PrecompDataset(tmp_path, "test", captions_per_image=1)
    assert (one.num_images, one.captions_per_image) == (20, 1)
    np.testing.assert_array_equal(one.image(7), np.full((2, 3), 1.0, np.float32))


def test_precomp_2d_global_vectors(tmp_path: Path) -> None:
    feats = np.arange(12, dtype=np.float64).reshape(3, 4)
    write_precomp(tmp_path, "train", feats, _caps(3, 2))
    ds = PrecompDataset(tmp_path, "train")
    assert ds.captions_per_image == 2 and ds.feature_dim == 4
    img = ds.image(1)
    assert img.shape == (1, 4) and img.dtype == np.float32
    np.testing.assert_array_equal(img[0], feats[1])


def test_precomp_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        PrecompDataset(missing, "train")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "train_caps.txt"))):
        PrecompDataset(tmp_path, "train")
    (tmp_path / "train_caps.txt").write_text("\n".join(_caps(3, 5)) + "\n")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "train_ims.npy"))):
        PrecompDataset(tmp_path, "train")

    np.save(tmp_path / "train_ims.npy", np.zeros((4, 2, 3), np.float32))  # 15 captions for 4 images
    with pytest.raises(DataError, match="multiple of 4") as info:
        PrecompDataset(tmp_path, "train")
    assert str(tmp_path / "train_caps.txt") in str(info.value)

    np.save(tmp_path / "train_ims.npy", np.zeros(15, np.float32))
    with pytest.raises(DataError, match=r"3-D.*got shape \(15,\)"):
        PrecompDataset(tmp_path, "train")
    np.save(tmp_path / "train_ims.npy", np.zeros((3, 2, 3), np.int64))
    with pytest.raises(DataError, match="floating-point"):
        PrecompDataset(tmp_path, "train")
    (tmp_path / "train_ims.npy").write_bytes(b"not an npy file")
    with pytest.raises(DataError, match="not a readable .npy"):
        PrecompDataset(tmp_path, "train")

    np.save(tmp_path / "train_ims.npy", np.zeros((3, 2, 3), np.float32))
    (tmp_path / "train_caps.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        PrecompDataset(tmp_path, "train")
    (tmp_path / "train_caps.txt").write_bytes(b"ok\nbad \xff\xfe\nok\n")
    with pytest.raises(DataError, match="line 2: expected UTF-8"):
        PrecompDataset(tmp_path, "train")
    (tmp_path / "train_caps.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match="max_images"):
        PrecompDataset(tmp_path, "train", max_images=0)
    with pytest.raises(DataError, match="captions_per_image"):
        PrecompDataset(tmp_path, "train", captions_per_image=0)
    # 3 rows and 3 lines: one row per caption needs a multiple of k=5 captions.
    with pytest.raises(DataError, match="captions_per_image=1"):
        PrecompDataset(tmp_path, "train")
    assert len(PrecompDataset(tmp_path, "train", captions_per_image=1)) == 3


def test_write_precomp_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="multiple of 2"):
        write_precomp(tmp_path, "x", np.zeros((2, 1, 3)), ["a", "b", "c"])
    with pytest.raises(DataError, match="line break"):
        write_precomp(tmp_path, "x", np.zeros((1, 1, 3)), ["a\nb"])
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------- feature dataset


def test_feature_caption_dataset() -> None:
    feats = [np.ones((k, 4), np.float64) * k for k in (1, 3, 2)]
    ds = FeatureCaptionDataset(feats, _caps(3, 2), captions_per_image=2)
    assert (ds.num_images, len(ds), ds.feature_dim) == (3, 6, 4)
    assert ds[3]["image"].shape == (3, 4) and ds[3]["image"].dtype == np.float32
    assert ds.num_regions().tolist() == [1, 3, 2]
    arr = np.zeros((3, 5, 4), np.float16)
    assert FeatureCaptionDataset(arr, _caps(3, 1), 1).image(0).shape == (5, 4)
    with pytest.raises(DataError, match="expected 3 images x 2 = 6 captions, got 5"):
        FeatureCaptionDataset(feats, _caps(3, 2)[:5], 2)
    with pytest.raises(DataError, match="one feature dimension"):
        FeatureCaptionDataset([np.zeros((2, 4)), np.zeros((2, 5))], ["a", "b"], 1)
    with pytest.raises(DataError, match=r"features\[1\]"):
        FeatureCaptionDataset([np.zeros((2, 4)), np.zeros((0, 4))], ["a", "b"], 1)


# ----------------------------------------------------------------------------------------------- Karpathy JSON


def _karpathy(tmp_path: Path, images: list, name: str = "dataset_x.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"dataset": "x", "images": images}))
    return path


def _image(n: int, split: str, caps: list[str], **extra: object) -> dict:
    sentences = [{"raw": c, "tokens": tokenize(c), "imgid": n, "sentid": 10 * n + i} for i, c in enumerate(caps)]
    return {"filename": f"{n}.jpg", "imgid": n, "split": split, "sentences": sentences, **extra}


def test_karpathy_json(tmp_path: Path) -> None:
    images = [
        _image(0, "train", ["A cat. ", "a dog"], filepath="train2014", cocoid=77),
        _image(1, "restval", ["one", "two", "three"]),
        _image(2, "val", ["x", "y"]),
        _image(3, "train", ["p", "q"]),
        _image(4, "test", ["only one"]),
    ]
    kj = KarpathyJSON(_karpathy(tmp_path, images))
    assert len(kj) == 5
    assert kj.splits() == {"train": 2, "restval": 1, "val": 1, "test": 1}
    train = kj.records("train")
    assert [r.filename for r in train] == ["0.jpg", "3.jpg"]
    assert train[0] == ImageRecord("0.jpg", "train2014", "train", ("A cat.", "a dog"), 77)
    assert train[1].image_id == 3 and train[1].filepath == ""
    assert [r.filename for r in kj.records(["train", "restval"])] == ["0.jpg", "1.jpg", "3.jpg"]
    assert captions_from_records(kj.records(["restval", "val"]), 2) == ["one", "two", "x", "y"]
    with pytest.raises(DataError, match="4.jpg: expected at least 2 captions, got 1"):
        captions_from_records(kj.records("test"), 2)
    with pytest.raises(DataError, match="'nope'"):
        kj.records("nope")
    with pytest.raises(FrozenInstanceError):
        train[0].split = "val"  # type: ignore[misc]


@pytest.mark.parametrize(
    "images, match",
    [
        ("notalist", "expected a JSON object with an 'images' list"),
        ([_image(0, "train", ["a"]), 5], r"images\[1\]: expected an object"),
        ([{"split": "train", "sentences": []}], r"images\[0\]\.filename: expected a non-empty string"),
        ([{"filename": "a.jpg", "sentences": []}], r"images\[0\]\.split"),
        ([{"filename": "a.jpg", "split": "train", "sentences": "abc"}],
         r"images\[0\]\.sentences: expected a list of \{raw, tokens\}"),
        ([{"filename": "a.jpg", "split": "train", "sentences": [{"raw": 3}]}], r"images\[0\]\.sentences\[0\]"),
        ([_image(0, "train", ["a"], imgid="zero")], r"images\[0\]\.imgid: expected an integer"),
        ([_image(0, "train", ["a"], filepath=1)], r"images\[0\]\.filepath"),
    ],
)
def test_karpathy_json_errors(tmp_path: Path, images: object, match: str) -> None:
    path = _karpathy(tmp_path, images)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=match) as info:
        KarpathyJSON(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_karpathy_json_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        KarpathyJSON(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match="invalid JSON at line 1"):
        KarpathyJSON(bad)
    bad.write_bytes(b'{"images": ["\xff"]}')
    with pytest.raises(DataError, match="UTF-8"):
        KarpathyJSON(bad)


def test_karpathy_tokens_only(tmp_path: Path) -> None:
    path = _karpathy(tmp_path, [{"filename": "a.jpg", "split": "train", "sentences": [{"tokens": ["a", "b"]}]}])
    assert KarpathyJSON(path).records("train")[0].captions == ("a b",)


@pytest.mark.skipif(not RSICD.is_file(), reason="shared RSICD data not present")
def test_karpathy_rsicd() -> None:
    kj = KarpathyJSON(RSICD)
    assert kj.splits() == {"train": 8734, "val": 1094, "test": 1093}
    test = kj.records("test")
    assert len(test) == 1093 and all(len(r.captions) == 5 for r in test)
    caps = captions_from_records(test, 5)
    assert len(caps) == 5465
    ds = FeatureCaptionDataset(np.zeros((len(test), 1, 8), np.float32), caps, 5)
    assert ds[5 * 10 + 2]["caption"] == test[10].captions[2]
    assert len(kj.records(["train", "val"])) == 9828


# ----------------------------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_sizes() -> None:
    cfg = SyntheticConfig(num_train=60, num_val=20, num_test=10, feature_dim=16)
    a, b = make_synthetic(cfg), make_synthetic(cfg)
    assert {k: v.num_images for k, v in a.items()} == {"train": 60, "val": 20, "test": 10}
    for split in a:
        assert a[split].captions() == b[split].captions()
        for i in range(a[split].num_images):
            np.testing.assert_array_equal(a[split].image(i), b[split].image(i))
    c = make_synthetic(cfg, seed=1)
    assert c["train"].captions() != a["train"].captions()
    assert not np.allclose(c["train"].image(0)[:1], a["train"].image(0)[:1])
    # Splits are independent of each other's sizes.
    d = make_synthetic(cfg, num_train=5)
    assert d["test"].captions() == a["test"].captions()
    np.testing.assert_array_equal(d["val"].image(3), a["val"].image(3))
    # Splits differ from each other.
    assert a["val"].captions() != a["test"].captions()[: len(a["val"])]


def test_synthetic_structure() -> None:
    cfg = SyntheticConfig(num_train=300, num_val=0, num_test=0, min_objects=2, max_objects=9,
                          min_clutter=1, max_clutter=3, captions_per_image=4, feature_dim=12)
    data = make_synthetic(cfg)
    assert set(data) == {"train"}
    ds = data["train"]
    assert isinstance(ds, FeatureCaptionDataset) and len(ds) == 1200 and ds.feature_dim == 12
    sizes = np.array([ds.image(i).shape[0] for i in range(ds.num_images)])
    assert sizes.min() >= 3 and sizes.max() <= 12 and len(np.unique(sizes)) >= 6
    item = ds[7]
    assert item["image"].dtype == np.float32 and np.isfinite(item["image"]).all()
    caps = ds.captions()
    assert all(c and c == c.strip() for c in caps)
    assert len(set(caps)) > 0.8 * len(caps)
    lengths = [len(tokenize(c)) for c in caps]
    assert min(lengths) <= 7 and max(lengths) >= 12  # captions mention 2 to 4 objects
    vocab = build_vocab(caps)
    assert {"red", "car", "tree", "small", "and"} <= set(vocab.word2idx)


def test_synthetic_default_sizes() -> None:
    # its generation time is measured by benchmarks/bench_data.py, not asserted here
    data = make_synthetic()
    assert {k: v.num_images for k, v in data.items()} == {"train": 4000, "val": 500, "test": 500}


def test_synthetic_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        make_synthetic(num_trian=3)
    with pytest.raises(ConfigError, match="max_objects"):
        make_synthetic(min_objects=5, max_objects=2)
    with pytest.raises(ConfigError, match="num_categories"):
        make_synthetic(num_categories=1000)
    with pytest.raises(ConfigError, match="feature_dim"):
        make_synthetic(feature_dim=0)


# ----------------------------------------------------------------------------------------------- collation


def test_collate_images_and_captions() -> None:
    imgs, lens = collate_images([np.ones((2, 3)), np.full((4, 3), 2.0, np.float16)])
    assert imgs.shape == (2, 4, 3) and imgs.dtype == torch.float32
    assert lens.tolist() == [2, 4] and lens.dtype == torch.int64
    assert imgs[0, 2:].abs().sum() == 0 and imgs[1].eq(2).all()
    with pytest.raises(DataError, match="feature dimension"):
        collate_images([np.ones((2, 3)), np.ones((2, 4))])
    caps, clens = collate_captions([[1, 5, 2], [1, 2]], pad_id=9)
    assert caps.tolist() == [[1, 5, 2], [1, 2, 9]] and clens.tolist() == [3, 2]
    assert caps.dtype == torch.int64 and clens.dtype == torch.int64


def _small_dataset() -> FeatureCaptionDataset:
    feats = [np.random.default_rng(i).standard_normal((k, 5)) for i, k in enumerate((3, 1, 4))]
    caps = ["a red car", "a car", "a red car next to a big tree", "tree", "a", "red red red red red red red"]
    return FeatureCaptionDataset(feats, caps, 2)


def test_collator_batch() -> None:
    ds = _small_dataset()
    vocab = build_vocab(ds.captions(), min_count=1)
    collate = Collator(vocab)
    samples = [ds[j] for j in (4, 0, 3)]  # order must be kept (no sorting)
    batch = collate(samples)
    assert isinstance(batch, Batch) and len(batch) == 3
    assert batch.images.shape == (3, 4, 5) and batch.image_lengths.tolist() == [4, 3, 1]
    np.testing.assert_allclose(batch.images[1, :3].numpy(), ds.image(0))
    assert batch.images[2, 1:].abs().sum() == 0
    assert batch.caption_lengths.tolist() == [3, 5, 3]
    assert batch.captions.shape == (3, 5)
    assert batch.captions[0].tolist() == [1, vocab.word2idx["a"], 2, 0, 0]
    assert vocab.decode(batch.captions[1]) == "a red car"
    assert batch.image_ids.tolist() == [2, 0, 1] and batch.caption_ids.tolist() == [4, 0, 3]
    for t in (batch.image_lengths, batch.captions, batch.caption_lengths, batch.image_ids, batch.caption_ids):
        assert t.dtype == torch.int64
    assert pickle.loads(pickle.dumps(collate)).tokenizer == vocab


def test_collator_in_dataloader_workers() -> None:
    ds = _small_dataset()
    loader = DataLoader(ds, batch_size=4, collate_fn=Collator(build_vocab(ds.captions(), 1)), num_workers=2)
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 2]
    assert torch.cat([b.caption_ids for b in batches]).tolist() == list(range(6))


def test_batch_to_and_pin_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _small_dataset()
    batch = Collator(build_vocab(ds.captions(), 1))([ds[j] for j in range(4)])
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved is not batch
    assert torch.equal(moved.images, batch.images) and moved.images.device.type == "cpu"
    assert batch.to(torch.device("cpu"), non_blocking=True).captions.dtype == torch.int64
    if torch.cuda.is_available():
        pinned = batch.pin_memory()
        assert isinstance(pinned, Batch) and pinned.images.is_pinned() and pinned.captions.is_pinned()
        loader = DataLoader(ds, batch_size=3, collate_fn=Collator(build_vocab(ds.captions(), 1)), pin_memory=True)
        assert all(b.images.is_pinned() for b in loader)
        assert batch.to("cuda").images.device.type == "cuda"
    else:
        # Without an accelerator pinning is impossible; the method must still map over every field.
        seen: list[torch.Size] = []
        monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: (seen.append(self.shape), self.clone())[1])
        pinned = batch.pin_memory()
        assert isinstance(pinned, Batch) and len(seen) == 6
        assert torch.equal(pinned.captions, batch.captions) and pinned.captions is not batch.captions


# -- the nltk-compatible (Penn Treebank) tokenizer used by converted official vocabularies -----------


def test_treebank_tokenizer_hand_computed():
    from vsekit.text.vocab import tokenize_treebank

    assert tokenize_treebank("A man riding a wave on top of a surfboard.") == [
        "a", "man", "riding", "a", "wave", "on", "top", "of", "a", "surfboard", ".",
    ]  # fmt: skip
    assert tokenize_treebank("A black-and-white photo, with 3,000 cars; it's 50% off!") == [
        "a", "black-and-white", "photo", ",", "with", "3,000", "cars", ";", "it", "'s", "50", "%", "off", "!",
    ]  # fmt: skip
    assert tokenize_treebank("marked with 'eagles' (twice). Don't go") == [
        "marked", "with", "'", "eagles", "'", "(", "twice", ")", ".", "do", "n't", "go",
    ]  # fmt: skip
    assert tokenize_treebank('he said "hi" -- then left...') == ["he", "said", "``", "hi", "''", "--", "then", "left", "..."]


def test_vocabulary_tokenizer_is_saved_and_used():
    from vsekit.text.vocab import Vocabulary, build_vocab

    caps = ["a dog.", "a dog, a cat."]
    tb = build_vocab(caps, min_count=1, tokenizer="treebank")
    assert "." in tb and "," in tb and tb.tokenizer == "treebank"
    assert tb.encode("a dog.")[-2] == tb.word2idx["."]
    again = Vocabulary.from_dict(tb.to_dict())
    assert again == tb and again.tokenizer == "treebank"
    words = build_vocab(caps, min_count=1)
    assert "." not in words and words.tokenizer == "words" and words != tb.with_tokenizer("words")
    with pytest.raises(DataError, match="tokenizer"):
        Vocabulary.from_dict({**tb.to_dict(), "tokenizer": "spacy"})


def test_treebank_tokenizer_matches_nltk_on_rsicd(rsicd):
    nltk_tok = pytest.importorskip("nltk.tokenize")
    import json
    import re

    from vsekit.text.vocab import tokenize_treebank

    tok = nltk_tok.NLTKWordTokenizer()
    data = json.loads((rsicd / "dataset_rsicd.json").read_text())
    captions = [s["raw"] for im in data["images"] for s in im["sentences"]]
    mismatches = []
    for c in captions:
        # word_tokenize = punkt sentences (a downloaded model, unavailable offline) + this tokenizer;
        # captions split into sentences after . ! ? and a space
        ref = [t for s in re.split(r"(?<=[.!?])\s+", c.lower().strip()) for t in tok.tokenize(s)]
        if ref != tokenize_treebank(c):
            mismatches.append(c)
    assert len(captions) > 50000 and mismatches == []
