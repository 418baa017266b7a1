"""The training program: one function, :func:`train`, driven by a :class:`vsekit.config.TrainConfig`.

A run folder holds::

    config.yaml     the resolved config
    metrics.jsonl   one JSON line per epoch (train loss, lr, validation metrics, timing)
    best.pt         the checkpoint with the best validation rsum (model selection; with optim.ema_decay, of
                    the averaged weights, which are also what validation scores)
    last.pt         the latest checkpoint with optimizer and RNG state (resume point)
    curves.png      training loss and validation rsum per epoch

All files are written atomically. Calling :func:`train` again on the same folder resumes from ``last.pt``
and continues exactly as an uninterrupted run would (same batches, same augmentation draws).

Data-parallel training: the same :func:`train` (and ``vsekit train``) runs under ``torchrun`` with
several processes (see :mod:`vsekit.training.distributed`). ``batch_size`` is the global batch; every process
trains on its slice of each global batch, the ranking loss is that of the global batch (hardest negatives
over all of it), and the updates equal those of one process with the whole batch. Rank 0 alone
evaluates (the others wait), writes the run folder and logs. ``last.pt`` is the same file as in a
single-process run: the resume position counts global batches, and augmentation draws are seeded per
(seed, rank, step), so a run resumes exactly with the same number of processes (and continues, with other
augmentation draws, with another number). The run folder must be on a filesystem every process sees.

The modules, one concern each:

* :mod:`~vsekit.training.loop`: :func:`train` and the epoch loop;
* :mod:`~vsekit.training.setup`: the datasets, the config resolved against them, the model and its tokenizer;
* :mod:`~vsekit.training.state`: ``last.pt`` and ``best.pt``, the RNG state, the same-run check of a resume;
* :mod:`~vsekit.training.optim`: parameter groups, the optimizer, the learning-rate schedule, freezing;
* :mod:`~vsekit.training.step`: the forward, the loss and the update of one step, and the epoch's loss tally;
* :mod:`~vsekit.training.graphs`: the step at bucketed static shapes, replayed as CUDA graphs (``cuda_graphs``);
* :mod:`~vsekit.training.batches`: the seeded batches of an epoch and their loader;
* :mod:`~vsekit.training.ema`: the weight average;
* :mod:`~vsekit.training.history`: ``metrics.jsonl``, ``curves.png`` and the log lines;
* :mod:`~vsekit.training.distributed` and :mod:`~vsekit.training.batchnorm`: the data-parallel helpers.
* :mod:`~vsekit.training.allocator`: keeping freed memory in the process between steps (glibc).
"""

from .batches import epoch_batches
from .ema import WeightEMA
from .loop import TrainResult, train
from .optim import apply_freeze, build_optimizer, lr_at_epoch, parameter_groups, unfreeze_epoch
from .setup import resolve_for_data
from .state import comparable_config
from .step import LOSS_SYNC_STEPS, TrainingForward, compile_dynamic, compute_loss

__all__ = [
    "LOSS_SYNC_STEPS",
    "TrainResult",
    "TrainingForward",
    "WeightEMA",
    "apply_freeze",
    "build_optimizer",
    "comparable_config",
    "compile_dynamic",
    "compute_loss",
    "epoch_batches",
    "lr_at_epoch",
    "parameter_groups",
    "resolve_for_data",
    "train",
    "unfreeze_epoch",
]
