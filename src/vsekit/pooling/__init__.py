"""Set pooling: GPO (VSE∞'s Generalized Pooling Operator) and the fixed poolings it generalises.

Every pooling maps a padded batch of sets ``features`` (B×L×D, the valid elements of set ``b`` at
the front, ``lengths[b]`` of them) to one vector per set and returns ``(pooled B×D, weights B×L)``.
``weights[b, k]`` is the weight of the ``k``-th largest value (rank ``k``) of every feature dimension,
so each pooling is ``pooled[b, d] = sum_k weights[b, k] * sorted_desc(features[b, :len_b, d])[k]``:
mean pooling puts ``1/len`` on every valid rank, max pooling ``1`` on rank 0, K-max pooling ``1/K``
on the first ``K`` ranks and GPO a learned softmax over ranks that depends only on the set size.
Padded positions always get weight exactly 0 and never influence the result, whatever they hold.

Functional ops: :func:`positional_encoding`, :func:`gpo_size_weights`, :func:`gpo_weights`,
:func:`pool_sorted`, :func:`sorting_network`. Modules: :class:`GPO`, :class:`MeanPool`,
:class:`MaxPool`, :class:`KMaxPool`, built by name with :func:`create_pooling`.

Speed (CPU, float32, 128×36×1024, exact results; ``benchmarks/bench_gpo.py``): a masked
``amax`` (max pooling) takes ~3 ms, while ``torch.sort`` along the set axis (the official code)
takes ~75× that and on a transposed copy ~35×. :func:`pool_sorted` therefore sorts on CPU with a
Batcher odd-even merge sorting network (268 compare-exchanges for 36 inputs), each a
``torch.maximum``/``torch.minimum`` over a whole contiguous B×D slice, run in place on blocks of
sets small enough to stay in cache (~7-10× max pooling). Training goes through a custom autograd
function that records each swap and routes the gradient back through the same swaps. The result
is exact: a sorting network produces the same sorted values as ``torch.sort`` and its gradient is
the gradient of the sort (ties aside, where both are valid subgradients). At inference, ranks
whose weight is exactly zero in every set are pruned from the network, and weights on rank 0 only
reduce to a masked ``amax``. GPUs use ``torch.sort`` (one kernel instead of hundreds).
"""

from .gpo import GPO, GPO_TEMPERATURE, gpo_size_weights, gpo_weights, positional_encoding
from .registry import SetPooling, create_pooling, list_poolings, register_pooling
from .sets import Lengths, check_lengths, length_mask
from .simple import KMaxPool, MaxPool, MeanPool
from .sortnet import AUTO_NETWORK_INFERENCE, AUTO_NETWORK_TRAINING, NETWORK_CHUNK, pool_sorted, sorting_network

__all__ = [
    "GPO_TEMPERATURE",
    "AUTO_NETWORK_INFERENCE",
    "AUTO_NETWORK_TRAINING",
    "NETWORK_CHUNK",
    "GPO",
    "Lengths",
    "MeanPool",
    "MaxPool",
    "KMaxPool",
    "SetPooling",
    "check_lengths",
    "length_mask",
    "positional_encoding",
    "gpo_size_weights",
    "gpo_weights",
    "pool_sorted",
    "sorting_network",
    "register_pooling",
    "create_pooling",
    "list_poolings",
]
