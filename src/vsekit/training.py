"""Kept for compatibility: the training program is the package :mod:`vsekit.train` (``train``, its
configuration helpers and the training step); this module re-exports the names that were importable from it."""

from .train import (  # noqa: F401 (re-exported)
    LOSS_SYNC_STEPS,
    TrainingForward,
    TrainResult,
    WeightEMA,
    apply_freeze,
    build_optimizer,
    comparable_config,
    compile_dynamic,
    compute_loss,
    epoch_batches,
    lr_at_epoch,
    parameter_groups,
    resolve_for_data,
    train,
    unfreeze_epoch,
)
