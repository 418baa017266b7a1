"""Importing official checkpoints: VSE∞ BiGRU, VSE∞ BERT and VSE++ files in the official layout (random weights,
the exact key names, small sizes) are converted and compared with the plain reference forward passes of
``tests/official_reference.py``; malformed inputs give one-line errors."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import vsekit
from vsekit.convert import convert_official, detect_kind, read_official_checkpoint, read_official_vocab
from vsekit.data import write_precomp
from vsekit.errors import CheckpointError
from vsekit.evaluation import evaluate_sims

from . import official_reference as ref

ATOL = 1e-5
WORDS = "a man woman dog cat rides sits on the red blue bike car bench under tree with small large . , black-and-white 's".split()
CAPTIONS = [
    "a man rides a red bike",
    "the dog sits under a large tree",
    "a woman",
    "a cat on the blue car with a zebra",  # "zebra" is unknown -> <unk>
    "dog",
    "A man rides a black-and-white bike, with a dog.",  # nltk keeps "," "." and the hyphenated word
    "The dog's bike. A cat sits on it.",  # two sentences, a possessive
]


# ----------------------------------------------------------------------------------------------
# official-layout files


def random_state(spec: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors with the given names and shapes (positive BN variances, int64 BN counters)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in spec.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(100, dtype=torch.int64)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[name] = torch.randn(shape, generator=gen) * 0.3
    return state


def gpo_spec() -> dict[str, tuple[int, ...]]:
    spec = {}
    for suffix in ("", "_reverse"):
        spec.update({
            f"gpool.gru.weight_ih_l0{suffix}": (96, 32), f"gpool.gru.weight_hh_l0{suffix}": (96, 32),
            f"gpool.gru.bias_ih_l0{suffix}": (96,), f"gpool.gru.bias_hh_l0{suffix}": (96,),
        })  # fmt: skip
    spec["gpool.linear.weight"] = (1, 32)
    return spec


def region_image_state(img_dim: int, embed: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """VSE∞ 'basic' image encoder: fc + MLP(img_dim, embed/2, embed) with two BatchNorms + GPO."""
    hidden = embed // 2
    spec = {"fc.weight": (embed, img_dim), "fc.bias": (embed,)}
    spec.update({"mlp.layers.0.weight": (hidden, img_dim), "mlp.layers.0.bias": (hidden,)})
    spec.update({"mlp.layers.1.weight": (embed, hidden), "mlp.layers.1.bias": (embed,)})
    for i, n in ((0, hidden), (1, embed)):
        for part in ("weight", "bias", "running_mean", "running_var"):
            spec[f"mlp.bns.{i}.{part}"] = (n,)
        spec[f"mlp.bns.{i}.num_batches_tracked"] = ()
    spec.update(gpo_spec())
    return random_state(spec, seed)


def rnn_spec(word_dim: int, hidden: int, layers: int, bidirectional: bool) -> dict[str, tuple[int, ...]]:
    spec = {}
    for layer in range(layers):
        width = word_dim if layer == 0 else hidden * (2 if bidirectional else 1)
        for suffix in ("", "_reverse") if bidirectional else ("",):
            spec.update({
                f"rnn.weight_ih_l{layer}{suffix}": (3 * hidden, width), f"rnn.weight_hh_l{layer}{suffix}": (3 * hidden, hidden),
                f"rnn.bias_ih_l{layer}{suffix}": (3 * hidden,), f"rnn.bias_hh_l{layer}{suffix}": (3 * hidden,),
            })  # fmt: skip
    return spec


def bigru_text_state(rows: int, word_dim: int, embed: int, layers: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    spec = {"embed.weight": (rows, word_dim), **rnn_spec(word_dim, embed, layers, True), **gpo_spec()}
    return random_state(spec, seed)


def vsepp_states(img_dim: int, rows: int, word_dim: int, embed: int, layers: int = 1) -> tuple[dict, dict]:
    image = random_state({"fc.weight": (embed, img_dim), "fc.bias": (embed,)}, 2)
    text = random_state({"embed.weight": (rows, word_dim), **rnn_spec(word_dim, embed, layers, False)}, 3)
    return image, text


def save_official(path: Path, image: dict, text: dict, prefix: bool = False, legacy: bool = False, **opt) -> Path:
    """``torch.save`` in the official layout (``module.`` keys when ``prefix``, as DataParallel writes; the
    pre-1.6 non-zip format of torch 1.2, which the VSE∞ code pins, when ``legacy``)."""
    if prefix:
        image = {f"module.{k}": v for k, v in image.items()}
        text = {f"module.{k}": v for k, v in text.items()}
    payload = {"epoch": 17, "model": [image, text], "best_rsum": 431.5, "opt": argparse.Namespace(**opt), "Eiters": 12345}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def scan_vocab(path: Path, words: list[str] = WORDS) -> tuple[Path, dict[str, int]]:
    """A SCAN vocabulary JSON (string keys in idx2word, no <mask>); returns it and the official word2idx
    after the VSE∞ loader appended <mask>."""
    tokens = ["<pad>", "<start>", "<end>", "<unk>", *words]
    word2idx = {w: i for i, w in enumerate(tokens)}
    path.write_text(json.dumps({"word2idx": word2idx, "idx2word": {str(i): w for i, w in enumerate(tokens)}, "idx": len(tokens)}))
    return path, {**word2idx, "<mask>": len(tokens)}


def vsepp_vocab_pickle(path: Path, monkeypatch: pytest.MonkeyPatch, words: list[str] = WORDS) -> tuple[Path, dict[str, int]]:
    """A pickle of a stand-in for VSE++'s ``vocab.Vocabulary`` (same module and class name, same attributes)."""
    module = types.ModuleType("vocab")

    class Vocabulary:  # the VSE++ wrapper: word2idx, idx2word (int keys), idx
        def __init__(self) -> None:
            self.word2idx, self.idx2word, self.idx = {}, {}, 0

        def add_word(self, word: str) -> None:
            if word not in self.word2idx:
                self.word2idx[word], self.idx2word[self.idx] = self.idx, word
                self.idx += 1

    Vocabulary.__module__, Vocabulary.__qualname__ = "vocab", "Vocabulary"
    module.Vocabulary = Vocabulary
    monkeypatch.setitem(sys.modules, "vocab", module)
    vocab = Vocabulary()
    for w in ["<pad>", "<start>", "<end>", "<unk>", *words]:
        vocab.add_word(w)
    path.write_bytes(pickle.dumps(vocab, protocol=2))
    return path, dict(vocab.word2idx)


def feature_sets(dim: int, sizes: tuple[int, ...] = (5, 1, 3, 7, 2), seed: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(k, dim, generator=gen) for k in sizes]


BIGRU_OPT = dict(
    data_name="coco_precomp", embed_size=16, img_dim=12, word_dim=8, margin=0.25, learning_rate=4e-4, lr_update=10,
    num_epochs=20, batch_size=64, grad_clip=2.0, optim="adam", max_violation=False, vse_mean_warmup_epochs=1,
    no_imgnorm=False, no_txtnorm=False, precomp_enc_type="basic", vocab_path="/tmp/data/vocab",
)


def write_bigru(tmp_path: Path, prefix: bool = False, layers: int = 1, legacy: bool = False) -> tuple[Path, Path, dict, dict, dict]:
    vocab_path, word2idx = scan_vocab(tmp_path / "coco_precomp_vocab.json")
    image = region_image_state(12, 16)
    text = bigru_text_state(len(word2idx), 8, 16, layers=layers)
    ckpt = save_official(tmp_path / "model_best.pth", image, text, prefix=prefix, legacy=legacy, **BIGRU_OPT)
    return ckpt, vocab_path, word2idx, image, text


# ----------------------------------------------------------------------------------------------
# VSE∞ BiGRU


@pytest.mark.parametrize("prefix,layers,legacy", [(False, 1, False), (True, 2, True)], ids=["plain", "dataparallel-2layers-legacy"])
def test_bigru_checkpoint_matches_official_forward(tmp_path, prefix, layers, legacy):
    ckpt, vocab_path, word2idx, image, text = write_bigru(tmp_path, prefix=prefix, layers=layers, legacy=legacy)
    assert (ckpt.read_bytes()[:2] == b"PK") != legacy
    out = convert_official(ckpt, tmp_path / "converted.pt", vocab=vocab_path)
    model = vsekit.load(out)

    sets = feature_sets(12)
    padded, lengths = ref.pad_sets(sets)
    want = ref.vse_infty_region_image(image, padded, lengths)
    got = model.encode_image([s.numpy() for s in sets])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)

    ids = [ref.official_caption_ids(word2idx, c) for c in CAPTIONS]
    assert [model.tokenizer.encode(c) for c in CAPTIONS] == ids  # the same ids as the official loader
    assert model.tokenizer.mask_id == word2idx["<mask>"] == len(word2idx) - 1
    tokens, token_lengths = ref.pad_ids(ids)
    want_text = ref.vse_infty_bigru_text(text, tokens, token_lengths)
    torch.testing.assert_close(model.encode_text(CAPTIONS), want_text, atol=ATOL, rtol=0)
    assert not torch.allclose(want_text[0], want_text[1])  # the captions really differ


def test_bigru_config_reproduces_official_options(tmp_path):
    ckpt, vocab_path, *_ = write_bigru(tmp_path)
    out = convert_official(ckpt, tmp_path / "converted.pt", vocab=vocab_path)
    stored = torch.load(out, weights_only=True)
    cfg = vsekit.checkpoint.config_from_checkpoint(stored)
    m = cfg.model
    assert (m.embed_size, m.image.img_dim, m.text.word_dim, m.text.num_layers) == (16, 12, 8, 1)
    assert (m.image.kind, m.image.mlp, m.image.pooling, m.text.kind, m.text.pooling) == ("precomp", True, "gpo", "bigru", "gpo")
    assert m.image.normalize and m.text.normalize and m.similarity == "cosine" and not m.use_abs
    assert (cfg.loss.margin, cfg.loss.negatives, cfg.loss.warmup_epochs) == (0.25, "hardest", 1)
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.lr_decay_epochs, cfg.optim.grad_clip) == ("adamw", 4e-4, [10], 2.0)
    assert (cfg.epochs, cfg.batch_size, cfg.data.test_split, cfg.eval_protocol) == (20, 64, "testall", "coco1k")
    assert (stored["epoch"], stored["step"], stored["best_rsum"]) == (17, 12345, 431.5)
    assert stored["converted_from"]["kind"] == "vse_infty_bigru"
    assert stored["converted_from"]["opt"]["vocab_path"] == "/tmp/data/vocab"


def test_no_norm_flags_and_max_violation_carry_over(tmp_path):
    vocab_path, word2idx = scan_vocab(tmp_path / "v.json")
    image, text = region_image_state(12, 16), bigru_text_state(len(word2idx), 8, 16)
    opt = {**BIGRU_OPT, "no_imgnorm": True, "no_txtnorm": True, "max_violation": True}
    ckpt = save_official(tmp_path / "m.pth", image, text, **opt)
    model = vsekit.load(convert_official(ckpt, tmp_path / "c.pt", vocab=vocab_path))
    assert not model.config.image.normalize and not model.config.text.normalize
    sets = feature_sets(12)
    padded, lengths = ref.pad_sets(sets)
    want = ref.vse_infty_region_image(image, padded, lengths, normalize=False)
    torch.testing.assert_close(model.encode_image([s.numpy() for s in sets]), want, atol=ATOL, rtol=0)
    tokens, token_lengths = ref.pad_ids([ref.official_caption_ids(word2idx, c) for c in CAPTIONS])
    want = ref.vse_infty_bigru_text(text, tokens, token_lengths, normalize=False)
    torch.testing.assert_close(model.encode_text(CAPTIONS), want, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------
# VSE++


VSEPP_OPT = dict(
    data_name="f30k_precomp", img_dim=10, embed_size=12, word_dim=6, margin=0.05, learning_rate=0.001, lr_update=15,
    num_epochs=30, batch_size=128, grad_clip=2.0, measure="order", use_abs=True, max_violation=True, no_imgnorm=False,
)


@pytest.mark.parametrize("vocab_format", ["pickle", "json"])
def test_vsepp_order_checkpoint_matches_official_forward(tmp_path, monkeypatch, vocab_format):
    if vocab_format == "pickle":
        vocab_path, word2idx = vsepp_vocab_pickle(tmp_path / "f30k_precomp_vocab.pkl", monkeypatch)
        monkeypatch.delitem(sys.modules, "vocab")  # the converter must not need the class
    else:
        vocab_path, word2idx = scan_vocab(tmp_path / "v.json")
        del word2idx["<mask>"]  # VSE++ does not append <mask>
    image, text = vsepp_states(10, len(word2idx), 6, 12, layers=2)
    ckpt = save_official(tmp_path / "model_best.pth.tar", image, text, prefix=True, **VSEPP_OPT)
    out = convert_official(ckpt, tmp_path / "vsepp.pt", vocab=vocab_path)
    model = vsekit.load(out)
    cfg = model.config
    assert (cfg.similarity, cfg.use_abs, cfg.image.normalize, cfg.image.mlp, cfg.text.kind, cfg.text.num_layers) == (
        "order", True, True, False, "gru", 2,
    )
    stored = vsekit.checkpoint.config_from_checkpoint(torch.load(out, weights_only=True))
    assert (stored.loss.margin, stored.loss.negatives, stored.optim.lr, stored.optim.weight_decay) == (0.05, "hardest", 0.001, 0.0)

    vectors = torch.randn(6, 10, generator=torch.Generator().manual_seed(5))
    want_images = ref.vsepp_precomp_image(image, vectors, use_abs=True)
    got_images = model.encode_image([v[None].numpy() for v in vectors])  # one 1×D set per image
    torch.testing.assert_close(got_images, want_images, atol=ATOL, rtol=0)

    ids = [ref.official_caption_ids(word2idx, c) for c in CAPTIONS]
    assert [model.tokenizer.encode(c) for c in CAPTIONS] == ids
    tokens, lengths = ref.pad_ids(ids)
    want_text = ref.vsepp_gru_text(text, tokens, lengths, use_abs=True)
    got_text = model.encode_text(CAPTIONS)
    torch.testing.assert_close(got_text, want_text, atol=ATOL, rtol=0)
    assert (got_text >= 0).all() and (got_images >= 0).all()
    torch.testing.assert_close(model.similarity(got_images, got_text), ref.order_sim(want_images, want_text), atol=ATOL, rtol=0)
    # the extra <mask> row is the only difference in the embedding table
    table = model.text_encoder.embed.weight
    assert table.shape[0] == len(word2idx) + 1 and torch.equal(table[:-1], text["embed.weight"]) and not table[-1].any()


def test_vsepp_cosine_without_image_norm(tmp_path):
    vocab_path, word2idx = scan_vocab(tmp_path / "v.json")
    del word2idx["<mask>"]
    image, text = vsepp_states(10, len(word2idx), 6, 12)
    opt = {**VSEPP_OPT, "measure": "cosine", "use_abs": False, "no_imgnorm": True, "max_violation": False}
    ckpt = save_official(tmp_path / "m.pth", image, text, **opt)
    model = vsekit.load(convert_official(ckpt, tmp_path / "c.pt", vocab=vocab_path))
    assert model.config.similarity == "cosine" and not model.config.image.normalize and model.config.text.normalize
    vectors = torch.randn(4, 10, generator=torch.Generator().manual_seed(6))
    want = ref.vsepp_precomp_image(image, vectors, no_imgnorm=True)
    torch.testing.assert_close(model.encode_image(vectors[:, None, :]), want, atol=ATOL, rtol=0)


def test_vsepp_image_embedding_by_hand(tmp_path):
    """fc = identity, bias 0: the image embedding is |x| / ||x||, e.g. (3, -4, 0, 0) -> (0.6, 0.8, 0, 0)."""
    vocab_path, word2idx = scan_vocab(tmp_path / "v.json")
    image = {"fc.weight": torch.eye(4), "fc.bias": torch.zeros(4)}
    _, text = vsepp_states(4, len(word2idx) - 1, 3, 4)
    ckpt = save_official(tmp_path / "m.pth", image, text, measure="order", use_abs=True)
    model = vsekit.load(convert_official(ckpt, tmp_path / "c.pt", vocab=vocab_path))
    got = model.encode_image(np.array([[[3.0, -4.0, 0.0, 0.0]], [[0.0, 0.0, -2.0, 0.0]]], dtype=np.float32))
    torch.testing.assert_close(got, torch.tensor([[0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# VSE∞ BERT


def make_bert_folder(path: Path, hidden: int = 24, layers: int = 2, seed: int = 0) -> tuple[Path, object]:
    """A tiny random BertModel and a small WordPiece vocabulary saved as a local Hugging Face folder."""
    transformers = pytest.importorskip("transformers")
    path.mkdir(parents=True, exist_ok=True)
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "zeb", "##ra", "##s", ".", ","]
    (path / "vocab.txt").write_text("\n".join(pieces) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(path))
    config = transformers.BertConfig(
        vocab_size=len(pieces), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=40,
    )  # fmt: skip
    torch.manual_seed(seed)
    bert = transformers.BertModel(config).eval()
    bert.save_pretrained(str(path))
    return path, bert


def bert_text_state(bert, embed: int, with_position_ids: bool) -> dict[str, torch.Tensor]:
    """VSE∞ BERT text encoder state: ``bert.*`` (other random values than the folder's) + linear + GPO."""
    gen = torch.Generator().manual_seed(7)
    state = {f"bert.{k}": v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in bert.state_dict().items()}
    if with_position_ids:  # transformers 4.x saved this buffer; later versions do not
        state["bert.embeddings.position_ids"] = torch.arange(40)[None]
    hidden = bert.config.hidden_size
    state.update(random_state({"linear.weight": (embed, hidden), "linear.bias": (embed,), **gpo_spec()}, 8))
    return state


def test_bert_checkpoint_matches_official_forward(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder, bert = make_bert_folder(tmp_path / "bert")
    image, text = region_image_state(12, 16), bert_text_state(bert, 16, with_position_ids=True)
    opt = {k: v for k, v in BIGRU_OPT.items() if k != "word_dim"}
    ckpt = save_official(tmp_path / "model_best.pth", image, text, prefix=True, **opt)
    out = convert_official(ckpt, tmp_path / "bert.pt", bert_path=folder)

    reference_bert = transformers.BertModel(transformers.BertConfig.from_pretrained(str(folder))).eval()
    reference_bert.load_state_dict(ref.sub_state({k: v for k, v in text.items() if "position_ids" not in k}, "bert."))
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(folder))
    captions = [*CAPTIONS, "zebras on a bench."]
    ids, _ = ref.pad_ids([tokenizer(c)["input_ids"] for c in captions])
    want_text = ref.vse_infty_bert_text(text, reference_bert, ids)

    shutil.rmtree(folder)  # the converted checkpoint is self-contained (tokenizer files + model config)
    model = vsekit.load(out)
    assert model.config.text.kind == "transformer" and model.config.embed_size == 16
    torch.testing.assert_close(model.encode_text(captions), want_text, atol=ATOL, rtol=0)
    sets = feature_sets(12, sizes=(4, 2, 6))
    padded, lengths = ref.pad_sets(sets)
    torch.testing.assert_close(
        model.encode_image([s.numpy() for s in sets]), ref.vse_infty_region_image(image, padded, lengths), atol=ATOL, rtol=0
    )


def test_bert_config_must_match_the_weights(tmp_path):
    _, bert = make_bert_folder(tmp_path / "bert")
    other, _ = make_bert_folder(tmp_path / "bert-wide", hidden=32)
    ckpt = save_official(tmp_path / "m.pth", region_image_state(12, 16), bert_text_state(bert, 16, False), **BIGRU_OPT)
    with pytest.raises(CheckpointError, match=r"BERT config does not match .*bert.embeddings.word_embeddings.weight.*\(\d+, 24\) in the checkpoint, \(\d+, 32\) in the config"):
        convert_official(ckpt, tmp_path / "c.pt", bert_path=other)
    with pytest.raises(CheckpointError, match="needs the BERT folder"):
        convert_official(ckpt, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="BERT folder not found"):
        convert_official(ckpt, tmp_path / "c.pt", bert_path=tmp_path / "nowhere")
    assert not (tmp_path / "c.pt").exists()


# ----------------------------------------------------------------------------------------------
# reading


def test_detect_kind_and_reader(tmp_path):
    ckpt, *_ = write_bigru(tmp_path, prefix=True)
    official = read_official_checkpoint(ckpt)
    assert all(not k.startswith("module.") for k in [*official.image_state, *official.text_state])
    assert official.opt["margin"] == 0.25 and official.epoch == 17 and official.iterations == 12345
    assert detect_kind(official.image_state, official.text_state) == "vse_infty_bigru"
    image, text = vsepp_states(4, 9, 3, 4)
    assert detect_kind(image, text) == "vsepp"
    assert detect_kind(image, {"bert.embeddings.word_embeddings.weight": torch.zeros(2)}) == "vse_infty_bert"


class Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (the BINSTRING opcodes), as VSE++'s Python 2 pickles hold them."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def test_vocab_readers_match_official_ids(tmp_path, monkeypatch):
    path, word2idx = vsepp_vocab_pickle(tmp_path / "v.pkl", monkeypatch)
    vocab, words = read_official_vocab(path)
    assert words == len(word2idx) and len(vocab) == words + 1
    assert all(vocab.word2idx[w] == i for w, i in word2idx.items()) and vocab.mask_id == words

    # Python 2 wrote attribute names and plain-str words as byte strings ("café" as UTF-8 bytes)
    module = types.ModuleType("vocab")

    class Vocabulary:
        def __getstate__(self):
            tokens = [b"<pad>", b"<start>", b"<end>", b"<unk>", "caf\u00e9".encode(), "na\u00efve"]
            return {b"word2idx": {w: i for i, w in enumerate(tokens)}, b"idx2word": dict(enumerate(tokens)), b"idx": 6}

    Vocabulary.__module__, Vocabulary.__qualname__ = "vocab", "Vocabulary"
    module.Vocabulary = Vocabulary
    monkeypatch.setitem(sys.modules, "vocab", module)
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(Vocabulary())
    (tmp_path / "py2.pkl").write_bytes(buffer.getvalue())
    vocab, words = read_official_vocab(tmp_path / "py2.pkl")
    assert vocab.idx2word == ["<pad>", "<start>", "<end>", "<unk>", "caf\u00e9", "na\u00efve", "<mask>"] and words == 6

    path, word2idx = scan_vocab(tmp_path / "v.json")
    vocab, words = read_official_vocab(path)
    assert vocab.word2idx == word2idx and words == len(word2idx) - 1


# ----------------------------------------------------------------------------------------------
# the command line and evaluation


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vsekit", *args], check=False, capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_convert_then_eval_matches_reference_metrics(tmp_path):
    ckpt, vocab_path, word2idx, image, text = write_bigru(tmp_path)
    out = tmp_path / "converted.pt"
    proc = run_cli("convert", str(ckpt), str(out), "--vocab", str(vocab_path))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout

    # a small precomp split: 8 images of 4 regions, 5 captions each
    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, 4, 12)).astype(np.float32)
    words = WORDS[:12]
    captions = [" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(40)]
    write_precomp(tmp_path / "data", "test", features, captions)
    proc = run_cli("eval", str(out), "--data-path", str(tmp_path / "data"), "--split", "test", "--json", str(tmp_path / "m.json"))
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "m.json").read_text())

    padded, lengths = ref.pad_sets([torch.from_numpy(f) for f in features])
    images = ref.vse_infty_region_image(image, padded, lengths)
    tokens, token_lengths = ref.pad_ids([ref.official_caption_ids(word2idx, c) for c in captions])
    texts = ref.vse_infty_bigru_text(text, tokens, token_lengths)
    want = evaluate_sims((images @ texts.t()).numpy(), 5)
    assert got == pytest.approx(want)


def corrupt(tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], tuple[str, ...]]:
    """CLI arguments of one malformed input and the words its error must contain."""
    ckpt, vocab_path, word2idx, image, text = write_bigru(tmp_path)
    out = str(tmp_path / "out.pt")
    bad = tmp_path / "bad.pth"
    if case == "not-torch":
        bad.write_text("hello, I am not a checkpoint\n")
        return [str(bad), out, "--vocab", str(vocab_path)], ("not a torch checkpoint", str(bad))
    if case == "no-model-list":
        torch.save({"epoch": 1, "opt": argparse.Namespace(margin=0.2)}, bad)
        return [str(bad), out, "--vocab", str(vocab_path)], ("'model': [image_state_dict, text_state_dict]", "no 'model' entry")
    if case == "unknown-layout":
        save_official(bad, image, {"encoder.weight": torch.zeros(3, 3)})
        return [str(bad), out, "--vocab", str(vocab_path)], ("unknown layout", "'encoder.weight'")
    if case == "missing-keys":
        save_official(bad, {k: v for k, v in image.items() if not k.startswith("mlp.layers.0")}, text, **BIGRU_OPT)
        return [str(bad), out, "--vocab", str(vocab_path)], ("missing", "model[0]['mlp.layers.0.weight']", "model[0]['mlp.layers.0.bias']")
    if case == "unexpected-keys":
        save_official(bad, image, {**text, "rnn.weight_extra": torch.zeros(2), "proj.weight": torch.zeros(2)}, **BIGRU_OPT)
        return [str(bad), out, "--vocab", str(vocab_path)], ("unexpected", "model[1]['rnn.weight_extra']", "model[1]['proj.weight']")
    if case == "shape-mismatch":
        save_official(bad, image, {**text, "gpool.linear.weight": torch.zeros(1, 31)}, **BIGRU_OPT)
        return [str(bad), out, "--vocab", str(vocab_path)], ("model[1]['gpool.linear.weight']", "(1, 31)", "(1, 32)")
    if case == "vocab-size":
        short, short_ids = scan_vocab(tmp_path / "short.json", WORDS[:-2])
        rows = len(word2idx)
        return [str(ckpt), out, "--vocab", str(short)], (str(short), f"{len(short_ids)} ids", f"{rows} rows")
    if case == "missing-vocab":
        return [str(ckpt), out], ("needs the vocabulary", "--vocab")
    if case == "bert-on-bigru":
        return [str(ckpt), out, "--vocab", str(vocab_path), "--bert", str(tmp_path)], ("BERT folder (--bert) applies to VSE∞ BERT checkpoints only",)
    if case == "grid":
        save_official(bad, {"backbone.base.0.weight": torch.zeros(2), "image_encoder.fc.weight": torch.zeros(2, 2)}, text)
        return [str(bad), out, "--vocab", str(vocab_path)], ("grid image encoder", "only precomputed")
    if case == "foreign-object":
        torch.save({"model": [image, text], "opt": Path("/x")}, bad)
        return [str(bad), out, "--vocab", str(vocab_path)], ("refusing to unpickle", "Path")
    if case == "evil-vocab":
        evil = tmp_path / "evil.pkl"
        evil.write_bytes(pickle.dumps(Evil(), protocol=2))
        return [str(ckpt), out, "--vocab", str(evil)], ("refusing to unpickle", "getcwd")
    if case == "kind-mismatch":
        return [str(ckpt), out, "--vocab", str(vocab_path), "--kind", "vsepp"], ("expected a VSE++", "VSE∞ BiGRU")
    if case == "overwrite":
        return [str(ckpt), str(ckpt), "--vocab", str(vocab_path)], ("would overwrite",)
    raise AssertionError(case)


class Evil:
    """Pickles as a call of os.getcwd: a vocabulary reader must refuse it, never call it."""

    def __reduce__(self):
        return (os.getcwd, ())


ERROR_CASES = [
    "not-torch", "no-model-list", "unknown-layout", "missing-keys", "unexpected-keys", "shape-mismatch", "vocab-size",
    "missing-vocab", "bert-on-bigru", "grid", "foreign-object", "evil-vocab", "kind-mismatch", "overwrite",
]  # fmt: skip


@pytest.mark.parametrize("case", ERROR_CASES)
def test_malformed_inputs_raise_one_line_checkpoint_errors(tmp_path, monkeypatch, case):
    args, needles = corrupt(tmp_path, case, monkeypatch)
    kwargs = {"vocab": args[args.index("--vocab") + 1] if "--vocab" in args else None}
    if "--bert" in args:
        kwargs["bert_path"] = args[args.index("--bert") + 1]
    if "--kind" in args:
        kwargs["kind"] = args[args.index("--kind") + 1]
    with pytest.raises(CheckpointError) as info:
        convert_official(args[0], args[1], **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    if case != "overwrite":
        assert not Path(args[1]).exists()


@pytest.mark.parametrize("case", ["not-torch", "missing-keys", "evil-vocab"])
def test_cli_errors_are_one_line_with_status_2(tmp_path, monkeypatch, case):
    args, needles = corrupt(tmp_path, case, monkeypatch)
    assert_one_line_error(run_cli("convert", *args), *needles)
