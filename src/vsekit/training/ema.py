"""The exponential moving average of the weights (``optim.ema_decay``) that validation scores and ``best.pt``
holds."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn


class WeightEMA:
    """An exponential moving average of a model's weights (``optim.ema_decay``).

    After every optimizer step, ``average = decay * average + (1 - decay) * current`` for each parameter that
    trains and each floating-point buffer (BatchNorm running statistics); other buffers (step counters) are
    copied. Frozen parameters keep their value, so their average is that value. Validation scores the averaged
    weights and ``best.pt`` holds them; ``last.pt`` keeps the average beside the raw weights, so a resumed run
    continues it exactly.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average."""
        params = dict(model.named_parameters())
        state = model.state_dict()
        moving, targets = [], []
        for k, v in state.items():
            if k in params and not params[k].requires_grad:
                continue
            if v.is_floating_point():
                moving.append(self.average[k])
                targets.append(v.detach())
            else:
                self.average[k].copy_(v)
        if moving:
            torch._foreach_lerp_(moving, targets, 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """Run a block with the averaged weights in ``model``, then put its own weights back."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict[str, Tensor]:
        return self.average

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k, v in state.items():
            self.average[k].copy_(v)


def weights_to_score(model: nn.Module, ema: WeightEMA | None) -> contextlib.AbstractContextManager[nn.Module]:
    """A block in which ``model`` holds the weights that validation scores and ``best.pt`` keeps: the average
    when there is one (``ema``), otherwise its own."""
    return ema.applied(model) if ema is not None else contextlib.nullcontext(model)
