"""The accelerator paths on a real GPU, against the CPU (skipped without CUDA; `benchmarks/gpu_check.sh` runs them)."""

from __future__ import annotations

import pytest
import torch

from vsekit.encoders.rnn import run_gru
from vsekit.pooling import GPO

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("no_tf32"),  # conftest: full float32 products, so CUDA and CPU agree
]


def test_padded_gru_on_cuda_matches_packed_on_cpu() -> None:
    torch.manual_seed(0)
    gru = torch.nn.GRU(16, 24, 1, batch_first=True, bidirectional=True)
    x = torch.randn(32, 20, 16, requires_grad=True)
    lengths = torch.randint(1, 21, (32,))
    out, h_n = run_gru(gru, x, lengths, method="packed", merge="mean")
    (out.sum() + h_n.sum()).backward()
    want = [out.detach(), h_n.detach(), x.grad.clone(), *(p.grad.clone() for p in gru.parameters())]
    gru.zero_grad()
    gru.cuda()
    xc = x.detach().cuda().requires_grad_()
    out_c, h_c = run_gru(gru, xc, lengths.cuda(), merge="mean")  # auto -> padded on CUDA
    (out_c.sum() + h_c.sum()).backward()
    got = [out_c.detach(), h_c.detach(), xc.grad, *(p.grad for p in gru.parameters())]
    for w, g in zip(want, got):
        torch.testing.assert_close(g.cpu(), w, atol=5e-4, rtol=1e-3)  # float32 sums over 640 steps, other orders


def test_gpo_on_cuda_matches_cpu_and_never_syncs() -> None:
    torch.manual_seed(0)
    gpo = GPO(32, 32)
    x = torch.randn(64, 49, 128, requires_grad=True)
    lengths = torch.randint(1, 50, (64,))
    pooled, weights = gpo(x, lengths)
    pooled.pow(2).sum().backward()
    want = [pooled.detach(), weights.detach(), x.grad.clone(), *(p.grad.clone() for p in gpo.parameters())]
    gpo.zero_grad()
    gpo.cuda()
    xc = x.detach().cuda().requires_grad_()
    lc = lengths.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        pooled_c, weights_c = gpo(xc, lc)
        pooled_c.pow(2).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    got = [pooled_c.detach(), weights_c.detach(), xc.grad, *(p.grad for p in gpo.parameters())]
    for w, g in zip(want[:3], got[:3]):
        torch.testing.assert_close(g.cpu(), w, atol=1e-4, rtol=1e-4)
    # The generator's parameter gradients sum 64 x 49 terms of up to about 1,800 that cancel: their float32
    # error follows the size of the terms, not of the result (on the CPU alone, against float64: up to 1.3e-3;
    # one thread against two: 2.4e-4). A 1e-4 tolerance failed on an H200 by 3.4e-4 in a gradient of size 790
    # with one CPU thread; the bound is relative to each tensor's largest entry instead.
    for w, g in zip(want[3:], got[3:]):
        torch.testing.assert_close(g.cpu(), w, atol=1e-5 * float(w.abs().max()), rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpo_half_precision_on_cuda(dtype) -> None:
    torch.manual_seed(0)
    gpo = GPO(32, 32).cuda()
    x = torch.randn(64, 49, 128, device="cuda") * 100
    lengths = torch.randint(1, 50, (64,), device="cuda")
    with torch.no_grad():
        ref, _ = gpo(x, lengths)
        with torch.autocast("cuda", dtype=dtype):
            half, weights = gpo(x.to(dtype), lengths)
    assert torch.isfinite(half).all()
    assert (weights[torch.arange(49, device="cuda") >= lengths.unsqueeze(1)] == 0).all()
    eps = {torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    assert ((half.float() - ref).abs().max() / ref.abs().max()).item() < 4 * eps


def test_checkpoint_of_a_cuda_run_holds_cpu_tensors_only(tmp_path) -> None:
    """Weights, optimizer state and weight average are all written on the CPU (an H200 run found the average on
    the GPU), and come back onto the model's device when loaded."""
    from .conftest import tiny_config
    from vsekit.checkpoint import save_checkpoint
    from vsekit.data import build_vocab
    from vsekit.models import create_model
    from vsekit.training import WeightEMA

    cfg = tiny_config("device=cuda")
    model = create_model(cfg.model, build_vocab(["a b c"], 1)).cuda()
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    ema = WeightEMA(model, 0.5)
    ema.update(model)
    path = save_checkpoint(tmp_path / "last.pt", model, cfg, optimizer=optimizer.state_dict(), ema=ema.state_dict())

    ckpt = torch.load(path, weights_only=True)  # no map_location: tensors come back where they were saved
    tensors = [*ckpt["model"].values(), *ckpt["ema"].values()]
    tensors += [t for state in ckpt["optimizer"]["state"].values() for t in state.values() if torch.is_tensor(t)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    again = WeightEMA(model, 0.5)
    again.load_state_dict(ckpt["ema"])
    assert all(v.device.type == "cuda" for v in again.average.values())
    assert all(torch.equal(again.average[k].cpu(), v.cpu()) for k, v in ema.average.items())
    optimizer.load_state_dict(ckpt["optimizer"])
    assert all(t.device.type == "cuda" for st in optimizer.state.values() for k, t in st.items() if k != "step")
