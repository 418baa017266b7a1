"""Training-step fast paths against plain references: the step-loop GRU (hand-written backward) against
``nn.GRU`` on packed sequences, and the region encoder's kept-rows and masked (sync-free) paths
against compaction + the set-wise MLP."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vsekit.config import ImageEncoderConfig, TextEncoderConfig
from vsekit.encoders import BiGRUTextEncoder, PrecompImageEncoder, TextInputs, compact, drop_set_elements, valid_mask
from vsekit.encoders.common import masked_batch_norm, set_keep_mask
from vsekit.encoders.gru_loop import tanh_into
from vsekit.encoders.rnn import run_gru
from vsekit.errors import ConfigError


@pytest.mark.parametrize(
    "layers,bidirectional,merge", [(1, True, "concat"), (1, True, "mean"), (2, True, "mean"), (1, False, "concat"), (3, False, "concat")]
)
def test_unrolled_and_padded_gru_match_packed_nn_gru(layers: int, bidirectional: bool, merge: str) -> None:
    torch.manual_seed(0)
    gru = nn.GRU(5, 7, layers, batch_first=True, bidirectional=bidirectional).double()
    lengths = torch.tensor([4, 1, 6, 6, 2, 4, 1])  # repeats, length 1, shorter than the padded width 8
    x = torch.randn(7, 8, 5, dtype=torch.double, requires_grad=True)
    results = {}
    for method in ("packed", "unrolled", "padded"):
        out, h_n = run_gru(gru, x, lengths, method, merge)
        g = torch.Generator().manual_seed(1)
        probe, probe_h = torch.randn(out.shape, generator=g, dtype=out.dtype), torch.randn(h_n.shape, generator=g, dtype=h_n.dtype)
        ((out * probe).sum() + (h_n * probe_h).sum()).backward()
        results[method] = [out.detach(), h_n.detach(), x.grad.clone(), *(p.grad.clone() for p in gru.parameters())]
        x.grad = None
        gru.zero_grad()
    pad = torch.arange(8) >= lengths.unsqueeze(1)
    for method in ("unrolled", "padded"):
        assert results["packed"][0].shape == results[method][0].shape
        for want, got in zip(results["packed"], results[method]):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
        assert (results[method][0][pad] == 0).all()


@pytest.mark.parametrize("lengths", [[1, 1, 1], [5], [3, 3, 3], [1, 6]])
def test_unrolled_gru_edge_lengths(lengths: list[int]) -> None:
    """One step only (the zero start state's products are skipped and W_hh gets no gradient), one sequence,
    equal lengths: the step loop against nn.GRU, values and every gradient."""
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, batch_first=True, bidirectional=True).double()
    x = torch.randn(len(lengths), max(lengths), 3, dtype=torch.double, requires_grad=True)
    results = []
    for method in ("packed", "unrolled"):
        out, h_n = run_gru(gru, x, torch.tensor(lengths), method, "concat")
        (out.sum() + (h_n * 2).sum()).backward()
        results.append([out.detach(), h_n.detach(), x.grad.clone(), *(p.grad.clone() for p in gru.parameters())])
        x.grad = None
        gru.zero_grad()
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-15), (torch.float32, 2.5e-7), (torch.bfloat16, 0.0)])
def test_tanh_into_matches_torch_tanh(dtype: torch.dtype, atol: float) -> None:
    """The step loop's tanh (2σ(2x) - 1 in float32/64, torch.tanh in half types), over the whole range and in place."""
    x = torch.cat([torch.linspace(-30, 30, 200_001, dtype=torch.float64), torch.tensor([0.0, 1e-30, -1e-30])]).to(dtype)
    want = torch.tanh(x)
    torch.testing.assert_close(tanh_into(x, torch.empty_like(x)), want, atol=atol, rtol=0)
    assert tanh_into(x.clone(), torch.empty_like(x)).abs().max() <= 1
    same = x.clone()
    assert tanh_into(same, same) is same
    torch.testing.assert_close(same, want, atol=atol, rtol=0)


def test_gru_method_auto_and_errors() -> None:
    torch.manual_seed(0)
    cfg = TextEncoderConfig(word_dim=6, augment=0.0)
    enc = BiGRUTextEncoder(cfg, 8, TextInputs(vocab_size=20, mask_id=19))
    ids, lengths = torch.randint(1, 19, (5, 7)), torch.tensor([7, 3, 1, 7, 5])
    train_out = enc(ids, lengths)  # auto: unrolled on CPU with gradients
    with torch.no_grad():
        eval_out = enc(ids, lengths)  # auto: nn.GRU
    torch.testing.assert_close(train_out.detach(), eval_out, atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError):
        run_gru(enc.rnn, torch.randn(5, 7, 6), lengths, method="cudnn")
    with pytest.raises(ConfigError):
        run_gru(enc.rnn, torch.randn(5, 7, 6), lengths, merge="sum")


def reference_region_encoder(enc: PrecompImageEncoder, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Compaction of the raw features, then fc and the set-wise MLP on valid rows, then pooling."""
    if enc.training and enc.cfg.size_augment > 0:
        keep = set_keep_mask(lengths, features.shape[1], enc.cfg.size_augment, enc.cfg.size_augment_mode)
        features, lengths = compact(features, keep)
    mask = valid_mask(lengths, features.shape[1])
    rows = features[mask]
    out = enc.fc(rows) + enc.mlp.forward_rows(rows)
    full = out.new_zeros(features.shape[0], features.shape[1], out.shape[1])
    full[mask] = out
    return enc.gpool(full, lengths)[0]


@pytest.mark.parametrize("mode", ["region", "grid"])
@pytest.mark.parametrize("training", [True, False])
def test_region_encoder_paths_match_the_reference(mode: str, training: bool) -> None:
    torch.manual_seed(0)
    cfg = ImageEncoderConfig(img_dim=12, size_augment=0.3, size_augment_mode=mode)
    enc = PrecompImageEncoder(cfg, 16).double().train(training)
    features = torch.randn(6, 9, 12, dtype=torch.double)
    lengths = torch.tensor([9, 1, 4, 9, 2, 7])
    features[valid_mask(lengths, 9).logical_not()] = 0.0
    copies = [copy.deepcopy(enc) for _ in range(3)]
    outs = []
    for i, model in enumerate(copies):
        torch.manual_seed(5)  # the same size-augmentation draws
        if i == 0:
            out = reference_region_encoder(model, features, lengths)
        elif i == 1:
            out = model(features, lengths)  # CPU: kept rows only, fused first layers
        else:  # the device path, forced on CPU: compaction + masked BatchNorm on every position
            keep = set_keep_mask(lengths, 9, cfg.size_augment, mode) if training else valid_mask(lengths, 9)
            comp, lens = compact(features, keep)
            out = model.gpool(model._project_padded(comp, valid_mask(lens, 9)), lens)[0]
        out.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}  # bns.1: never applied
        outs.append((out.detach(), grads, model.state_dict()))
    want, want_grads, want_state = outs[0]
    for got, grads, state in outs[1:]:
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
        assert grads.keys() == want_grads.keys()
        for name, grad in want_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-12, rtol=1e-10, msg=name)
        for name, value in want_state.items():  # BatchNorm running statistics included
            torch.testing.assert_close(state[name], value, atol=1e-12, rtol=1e-10, msg=name)


def test_masked_batch_norm_equals_batch_norm_on_the_valid_rows() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 5, 3, dtype=torch.double)
    mask = valid_mask(torch.tensor([5, 2, 1, 4]), 5)
    bn_a, bn_b = nn.BatchNorm1d(3).double(), nn.BatchNorm1d(3).double()
    for _ in range(2):  # running statistics accumulate the same way
        want = bn_a(x[mask])
        got = masked_batch_norm(x, mask, bn_b)[mask]
        torch.testing.assert_close(got, want)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn_b, name), getattr(bn_a, name))
    bn_a.eval(), bn_b.eval()
    torch.testing.assert_close(masked_batch_norm(x, mask, bn_b)[mask], bn_a(x[mask]))


def test_drop_set_elements_keeps_its_draws() -> None:
    """The refactored size augmentation draws exactly as before (compaction of set_keep_mask)."""
    x, lengths = torch.randn(8, 10, 2), torch.tensor([10, 3, 1, 10, 7, 2, 10, 5])
    torch.manual_seed(3)
    a, la = drop_set_elements(x, lengths, 0.4)
    torch.manual_seed(3)
    b, lb = compact(x, set_keep_mask(lengths, 10, 0.4, "region"))
    assert torch.equal(a, b) and torch.equal(la, lb)
