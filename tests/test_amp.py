"""Mixed precision: poolings in bf16/fp16 (no overflow, padded positions at weight exactly 0, within
one rounding of float32), the GRU fast path under autocast, and training in bf16 / fp16 (grad scaler).

Tolerances: a half-precision pooling is compared with the float32 pooling of the *same* half values,
so the only error left is the final rounding to the half dtype: relative 2**-8 (bf16, 8-bit mantissa)
and 2**-11 (fp16) per element, with a factor 2 of slack.
"""

from __future__ import annotations

import json

import pytest
import torch

from vsekit.config import apply_overrides
from vsekit.encoders.rnn import run_gru
from vsekit.pooling import GPO, KMaxPool, MaxPool, MeanPool, gpo_weights
from vsekit.presets import get_preset
from vsekit.training import train

from .conftest import chance_rsum

HALF = [torch.bfloat16, torch.float16]
REL_TOL = {torch.bfloat16: 2 * 2.0**-8, torch.float16: 2 * 2.0**-11}
LENGTHS = [36, 1, 2, 5, 36, 30, 17, 3, 1, 2]  # many padded positions, sets of one and two
BIG = {torch.bfloat16: 1e30, torch.float16: 6e4}  # near the top of each format's range


def big_batch(dtype: torch.dtype, pad: float) -> torch.Tensor:
    """Features of magnitude up to BIG in dtype; padded positions hold ``pad`` (garbage)."""
    g = torch.Generator().manual_seed(0)
    x = torch.empty(len(LENGTHS), 36, 48).uniform_(-1, 1, generator=g) * BIG[dtype]
    x[:, :, :8] = torch.rand(len(LENGTHS), 36, 8, generator=g) * BIG[dtype] * 0.5 + BIG[dtype] * 0.5  # all large, same sign
    pad_mask = torch.arange(36) >= torch.tensor(LENGTHS).unsqueeze(1)
    x[pad_mask] = pad
    return x.to(dtype)


def assert_close_rel(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    err = (got.double() - want.double()).abs()
    assert (err <= REL_TOL[dtype] * want.double().abs() + 1e-30).all(), float((err / want.double().abs()).max())


PAD_POS = torch.arange(36) >= torch.tensor(LENGTHS).unsqueeze(1)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("method", ["sort", "network"])
@pytest.mark.parametrize("pad", [0.0, float("nan"), float("inf")])
def test_gpo_half_matches_fp32_with_large_values_and_padding(dtype: torch.dtype, method: str, pad: float) -> None:
    torch.manual_seed(0)
    gpo = GPO(method=method)
    x = big_batch(dtype, pad).requires_grad_()
    out, weights = gpo(x, LENGTHS)
    out.float().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all() and (x.grad[PAD_POS] == 0).all()
    assert (weights[PAD_POS] == 0).all() and (weights[~PAD_POS] >= 0).all()
    # float32 reference on the same (half-rounded) values, padding cleaned
    x32 = x.detach().float().masked_fill(PAD_POS.unsqueeze(-1), 0.0)
    want, want_w = gpo(x32, LENGTHS)
    assert_close_rel(out, want.detach(), dtype)
    torch.testing.assert_close(weights.float(), want_w.detach(), atol=REL_TOL[dtype], rtol=0)
    with torch.inference_mode():  # eval: cached weights, pruned network / masked amax
        eval_out, _ = gpo.eval()(x.detach(), LENGTHS)
    assert torch.isfinite(eval_out).all()
    assert_close_rel(eval_out, want.detach(), dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_gpo_weight_generator_in_half(dtype: torch.dtype) -> None:
    """A GPO whose parameters are half: scores masked to -inf, softmax at temperature 0.1 in float32."""
    torch.manual_seed(0)
    gpo = GPO().to(dtype)
    with torch.no_grad():
        gpo.linear.weight.mul_(300)  # scores / 0.1 far beyond the half range before the softmax
    lengths = torch.tensor([1, 2, 7, 256, 100, 256, 3])
    w = gpo_weights(lengths, gpo.gru, gpo.linear)
    pad = torch.arange(256) >= lengths.unsqueeze(1)
    assert w.dtype == dtype and torch.isfinite(w).all()
    assert (w[pad] == 0).all()
    torch.testing.assert_close(w.float().sum(1), torch.ones(len(lengths)), atol=1e-2, rtol=0)
    assert w[0, 0] == 1  # a set of one puts all its weight on its element


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("pool", [MeanPool(), MaxPool(), KMaxPool(10)], ids=["mean", "max", "kmax10"])
def test_fixed_poolings_half_do_not_overflow(dtype: torch.dtype, pool: torch.nn.Module) -> None:
    # 36 values near 6e4 sum to 2e6: beyond fp16; the poolings accumulate in float32
    x = big_batch(dtype, float("nan")).requires_grad_()
    out, weights = pool(x, LENGTHS)
    out.float().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all() and (x.grad[PAD_POS] == 0).all()
    assert (weights[PAD_POS] == 0).all()
    want, _ = pool(x.detach().double().masked_fill(PAD_POS.unsqueeze(-1), 0.0), LENGTHS)
    assert_close_rel(out, want, dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_gpo_and_gru_under_autocast(dtype: torch.dtype) -> None:
    """The encoders' path under CPU autocast: linear -> GPO, and the GRU fast path in half."""
    torch.manual_seed(0)
    linear, gpo = torch.nn.Linear(16, 32), GPO()
    x = torch.randn(len(LENGTHS), 36, 16)
    with torch.autocast("cpu", dtype=dtype):
        out, weights = gpo(linear(x), LENGTHS)
    assert out.dtype == dtype and torch.isfinite(out).all() and (weights[PAD_POS] == 0).all()
    want, _ = gpo(linear(x), LENGTHS)
    torch.testing.assert_close(out.float(), want.detach(), atol=0.05, rtol=0.05)

    gru = torch.nn.GRU(8, 16, batch_first=True, bidirectional=True)
    tokens = torch.randn(6, 9, 8, requires_grad=True)
    lengths = torch.tensor([9, 1, 4, 9, 2, 6])
    with torch.autocast("cpu", dtype=dtype):
        half_out, _ = run_gru(gru, tokens, lengths, method="unrolled", merge="mean")
    half_out.float().sum().backward()
    ref, _ = run_gru(gru, tokens, lengths, method="packed", merge="mean")
    assert half_out.dtype == dtype and torch.isfinite(tokens.grad).all()
    torch.testing.assert_close(half_out.float(), ref.detach(), atol=0.05, rtol=0.05)


REGION_TINY = [
    "data.kind=synthetic", "data.val_split=val", "data.test_split=test", "data.val_max_images=null",
    "data.vocab_min_count=1", "data.synthetic={num_train: 600, num_val: 100, num_test: 100}",
    "model.image.img_dim=64", "model.embed_size=64", "model.text.word_dim=32", "batch_size=100", "optim.lr=2e-3",
]  # fmt: skip


@pytest.mark.learning
def test_bf16_training_of_the_region_bigru_preset_learns(tmp_path, learning_seed, measured) -> None:
    """VSE∞ region + BiGRU (GPO both sides, size and text augmentation) trained in bf16 autocast.

    Summed hinges throughout (``loss.warmup_epochs=3``): hardest negatives on 600 images for three
    epochs collapse in float32 too; here the fp32 run reaches a similar rsum (~140, chance ~32).
    """
    overrides = [*REGION_TINY, "epochs=3", "loss.warmup_epochs=3", "precision=bf16", f"seed={learning_seed}"]
    cfg = apply_overrides(get_preset("vse_infty_region_bigru"), overrides)
    result = train(cfg, tmp_path, progress_stream=None)
    losses = [r["train_loss"] for r in result.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    # 128..178 over 3 kernels x 3 seeds (benchmarks/learning_spread.py)
    assert measured("best_rsum", result.best_rsum) > 3 * chance_rsum(100), [r["val_rsum"] for r in result.history]


@pytest.mark.learning
def test_fp16_training_uses_the_grad_scaler(tmp_path, learning_seed, measured) -> None:
    overrides = [*REGION_TINY, "epochs=1", "precision=fp16", f"seed={learning_seed}"]
    result = train(apply_overrides(get_preset("vse_infty_region_bigru"), overrides), tmp_path, progress_stream=None)
    assert all(torch.isfinite(torch.tensor([r["train_loss"] for r in result.history])))
    assert measured("best_rsum", result.best_rsum) > chance_rsum(100)  # one epoch: 48..54 over 3 kernels x 3 seeds (benchmarks/learning_spread.py)
    last = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert last["scaler"] and last["scaler"]["scale"] > 0  # the fp16 grad scaler ran and was saved
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1
