"""One GRU direction as a step loop over a packed sequence, with a hand-written backward (CPU training).

:func:`gru_direction` is what :func:`vsekit.encoders.rnn.run_gru` calls for ``method="unrolled"``. Gate order
(r, z, n) and formulas are ``nn.GRU``'s::

    r, z = σ(i_rz + h W_hrz^T + b_hrz)        n = tanh(i_n + r ⊙ (h W_hn^T + b_hn))        h' = n + z ⊙ (h - n)

What makes it faster than autograd over the same loop (and than ``nn.GRU``'s CPU kernel on packed sequences):

- the input projections of all steps are one product done by the caller; each step does one product forward
  and one backward, and the ``W_hh`` gradient is ONE product over all rows;
- products by a state known to be zero are skipped: a row that starts from zero (every row of the first step
  each direction takes; in the reverse direction also each sequence's first row, as it joins) has ``b_hh`` for
  its gates and sends no gradient further back, and the first step's rows add nothing to the ``W_hh`` gradient;
- every step writes into buffers allocated once, with as few elementwise passes as the formulas allow
  (``z - z²`` for σ', one ``addcmul`` for the new state);
- in float32/float64 ``tanh(x)`` is computed as ``2σ(2x) - 1``: torch's CPU ``tanh`` kernel took 2.5 ns per
  element against 0.5 for ``sigmoid`` (AVX-512, one thread); the difference is at most 2e-7 in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor


def tanh_into(x: Tensor, out: Tensor) -> Tensor:
    """``tanh(x)`` written to ``out`` (which may be ``x``): ``2σ(2x) - 1`` in float32/float64, ``torch.tanh``
    for half types (whose rounding near 0 the identity would coarsen)."""
    if x.dtype not in (torch.float32, torch.float64):
        return torch.tanh(x, out=out)
    torch.mul(x, 2, out=out)
    return torch.sigmoid(out, out=out).mul_(2).sub_(1)


def _starts(batch_sizes: list[int]) -> list[int]:
    starts = [0]
    for size in batch_sizes[:-1]:
        starts.append(starts[-1] + size)
    return starts


class _GRUDirection(torch.autograd.Function):
    """Forward: the N×H packed hidden states from the packed input projections ``gates_in`` (N×3H, step
    ``t`` holding the first ``batch_sizes[t]`` sequences), ``W_hh`` (3H×H) and ``b_hh``. It keeps, per row,
    the state the row started from, the gates ``[r, z, h W_hn^T + b_hn]`` and ``n``."""

    @staticmethod
    def forward(ctx, gates_in: Tensor, w_hh: Tensor, b_hh: Tensor, batch_sizes: list[int], reverse: bool) -> Tensor:  # type: ignore[override]
        rows, hidden = gates_in.shape[0], w_hh.shape[1]
        starts = _starts(batch_sizes)
        out = gates_in.new_empty(rows, hidden)
        h_prev_all = gates_in.new_zeros(rows, hidden)  # the state each row started from
        gates = gates_in.new_empty(rows, 3 * hidden)  # [r, z, h W_hn^T + b_hn] per row
        n_all = gates_in.new_empty(rows, hidden)
        order = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
        prev = None
        for t in order:
            lo, size = starts[t], batch_sizes[t]
            h_prev, g = h_prev_all[lo : lo + size], gates[lo : lo + size]
            # forward: a shrinking batch, every row continues; reverse: the rows past the shared ones start
            # from zero, and a row that starts from zero has the bias for its gates
            shared = 0 if prev is None else min(size, prev[1])
            if shared:
                h_prev[:shared] = out[prev[0] : prev[0] + shared]
                torch.addmm(b_hh, h_prev[:shared], w_hh.t(), out=g[:shared])
            if shared < size:
                g[shared:].copy_(b_hh.expand_as(g[shared:]))
            g_in = gates_in[lo : lo + size]
            rz = g[:, : 2 * hidden]
            torch.sigmoid(rz.add_(g_in[:, : 2 * hidden]), out=rz)
            n = n_all[lo : lo + size]
            tanh_into(torch.addcmul(g_in[:, 2 * hidden :], rz[:, :hidden], g[:, 2 * hidden :], out=n), n)
            h = out[lo : lo + size]
            torch.addcmul(n, rz[:, hidden:], torch.sub(h_prev, n, out=h), out=h)  # n + z (h_prev - n)
            prev = (lo, size)
        ctx.save_for_backward(w_hh, h_prev_all, gates, n_all)
        ctx.plan = (starts, list(batch_sizes), reverse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:  # type: ignore[override]
        w_hh, h_prev_all, gates, n_all = ctx.saved_tensors
        starts, batch_sizes, reverse = ctx.plan
        hidden = w_hh.shape[1]
        d_gh_all = torch.empty_like(gates)  # gradient of [r, z]'s pre-activations and of h W_hn^T + b_hn
        d_gi_n = torch.empty_like(n_all)  # gradient of i_n + r (h W_hn^T + b_hn)
        dh_buf, spare = torch.empty_like(n_all[: batch_sizes[0]]), torch.empty_like(gates[: batch_sizes[0]])
        order = list(range(len(batch_sizes)) if reverse else range(len(batch_sizes) - 1, -1, -1))
        carry = None  # gradient w.r.t. the state the previous-in-time step's rows started from
        for position, t in enumerate(order):
            lo, size = starts[t], batch_sizes[t]
            dh = dh_buf[:size]
            if carry is None:
                dh.copy_(grad_out[lo : lo + size])
            else:
                shared = min(size, carry.shape[0])
                torch.add(grad_out[lo : lo + shared], carry[:shared], out=dh[:shared])
                dh[shared:].copy_(grad_out[lo + shared : lo + size])
            carry = _step_backward(dh, gates[lo : lo + size], n_all[lo : lo + size], h_prev_all[lo : lo + size],
                                   d_gh_all[lo : lo + size], d_gi_n[lo : lo + size], spare[:size], hidden)  # fmt: skip
            # only the rows that continue a row of the step before in time send a gradient back: none for
            # the first step, those that the next step in this loop shares in the reverse direction
            back = min(size, batch_sizes[order[position + 1]]) if position + 1 < len(order) else 0
            carry = torch.addmm(carry[:back], d_gh_all[lo : lo + back], w_hh) if back else None
        # the rows of the first step in time started from zero and add nothing to W_hh's gradient
        lo, hi = (0, starts[-1]) if reverse else (batch_sizes[0], gates.shape[0])
        d_w = d_gh_all[lo:hi].t().mm(h_prev_all[lo:hi]) if hi > lo else torch.zeros_like(w_hh)
        d_b = d_gh_all.sum(0)
        d_gh_all[:, 2 * hidden :] = d_gi_n  # the input gates' gradient: [r, z] as above, then n's
        return d_gh_all, d_w, d_b, None, None


def _step_backward(dh: Tensor, g: Tensor, n: Tensor, h_prev: Tensor, d_gh: Tensor, dn_pre: Tensor,
                   spare: Tensor, hidden: int) -> Tensor:  # fmt: skip
    """One step's gradients from ``dh`` (the step's output gradient): writes the gates' (``d_gh``) and
    ``i_n``'s (``dn_pre``) and returns ``dh ⊙ z``, the direct part of the previous state's gradient."""
    r, z, ghn = g[:, :hidden], g[:, hidden : 2 * hidden], g[:, 2 * hidden :]
    sig_d = torch.addcmul(g[:, : 2 * hidden], g[:, : 2 * hidden], g[:, : 2 * hidden], value=-1, out=spare[:, : 2 * hidden])
    torch.addcmul(dh, dh, z, value=-1, out=dn_pre)  # dh (1 - z)
    n2 = torch.mul(n, n, out=spare[:, 2 * hidden :])
    torch.addcmul(dn_pre, dn_pre, n2, value=-1, out=dn_pre)  # ... (1 - n²)
    torch.mul(dn_pre, ghn, out=d_gh[:, :hidden])  # then ⊙ r (1 - r): r's pre-activation
    torch.sub(h_prev, n, out=d_gh[:, hidden : 2 * hidden]).mul_(dh)  # then ⊙ z (1 - z)
    d_gh[:, : 2 * hidden].mul_(sig_d)
    torch.mul(dn_pre, r, out=d_gh[:, 2 * hidden :])
    return torch.mul(dh, z, out=n2)


def gru_direction(gates_in: Tensor, w_hh: Tensor, b_hh: Tensor, batch_sizes: list[int], reverse: bool) -> Tensor:
    """The N×H packed outputs of one GRU direction (``reverse``: last step first) from its packed input
    projections ``gates_in = x W_ih^T + b_ih`` (N×3H); differentiable in ``gates_in``, ``w_hh`` and ``b_hh``."""
    return _GRUDirection.apply(gates_in, w_hh, b_hh, batch_sizes, reverse)
