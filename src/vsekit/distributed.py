"""Kept for compatibility: the data-parallel helpers are :mod:`vsekit.training.distributed` (process group,
collectives, seeded collation, DDP) and :mod:`vsekit.training.batchnorm` (BatchNorm over the global batch); this
module re-exports their names."""

from .training.batchnorm import CrossRankBatchNorm, convert_batchnorm, restore_batchnorm  # noqa: F401 (re-exported)
from .training.distributed import (  # noqa: F401 (re-exported)
    DistContext,
    SeededCollate,
    Shard,
    all_gather_nograd,
    all_reduce_with_grad,
    barrier,
    broadcast_object,
    env_rank,
    gather_objects,
    gather_with_grad,
    init_from_env,
    rank_seed,
    reduce_sum,
    shard_sizes,
    shutdown,
    wrap_ddp,
)
