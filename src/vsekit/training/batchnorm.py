"""BatchNorm over the global batch of a data-parallel run (:mod:`vsekit.training.distributed`).

:func:`convert_batchnorm` swaps every BatchNorm layer of a model for a :class:`CrossRankBatchNorm` sharing its
parameters and buffers, whose training-mode statistics are reduced over the processes (gloo and NCCL alike);
:func:`restore_batchnorm` swaps them back, so the model that training returns is the plain one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .distributed import all_reduce_with_grad

__all__ = ["CrossRankBatchNorm", "convert_batchnorm", "restore_batchnorm"]


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all ranks).

    Same parameters, buffers and state-dict keys as the BatchNorm it replaces (:func:`convert_batchnorm`);
    in evaluation mode, without running statistics, or without a process group it is that BatchNorm.
    The mean and the (biased) variance are reduced over the ranks in two passes with an autograd-aware
    all-reduce, so gradients equal those of one process over the concatenated batch; the running
    statistics get the unbiased variance of the global batch, as ``nn.BatchNorm`` does. Any input of shape
    ``(N, C, ...)`` works (it replaces ``BatchNorm1d``, ``2d`` and ``3d``).
    """

    _plain: type[nn.modules.batchnorm._BatchNorm] = nn.BatchNorm1d

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.track_running_stats and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in float32 at least
        local_n = xf.numel() // max(1, xf.shape[1])
        stats = all_reduce_with_grad(torch.cat([xf.sum(dims), xf.new_full((1,), float(local_n))]))
        n = stats[-1]
        mean = stats[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce_with_grad((centred * centred).sum(dims)) / n
        with torch.no_grad():  # no host sync: the count stays a tensor
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
            else:
                factor = self.momentum
            self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
            unbiased = var.detach() * (n / (n - 1).clamp(min=1))
            self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _swap_batchnorms(module: nn.Module, swap: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Replace (in place) every submodule for which ``swap`` returns a new module; returns ``module`` or its
    replacement. ``swap`` returns None to descend into a module's children instead."""
    new = swap(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        new_child = _swap_batchnorms(child, swap)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def _rebuild_batchnorm(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A ``cls`` BatchNorm sharing ``module``'s parameters, buffers and mode."""
    new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    new.weight, new.bias = module.weight, module.bias
    new.running_mean, new.running_var = module.running_mean, module.running_var
    new.num_batches_tracked = module.num_batches_tracked
    new.train(module.training)
    return new


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm layer of ``module`` (in place) for a :class:`CrossRankBatchNorm` sharing its
    parameters and buffers. Returns ``module`` (or the replacement when ``module`` itself is a BatchNorm)."""

    def swap(m: nn.Module) -> nn.Module | None:
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, CrossRankBatchNorm):
            new = _rebuild_batchnorm(m, CrossRankBatchNorm)
            new._plain = type(m)
            return new
        return None

    return _swap_batchnorms(module, swap)


def restore_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_batchnorm`: every :class:`CrossRankBatchNorm` becomes its original class again."""
    return _swap_batchnorms(module, lambda m: _rebuild_batchnorm(m, m._plain) if isinstance(m, CrossRankBatchNorm) else None)
