"""Evaluation: retrieval metrics over image-text similarity matrices."""

from .metrics import (
    METRIC_KEYS,
    PROTOCOLS,
    Protocol,
    ensemble_sims,
    evaluate_protocol,
    evaluate_sims,
    format_metrics_table,
    i2t_ranks,
    mean_recall,
    rank_metrics,
    recall_curve,
    t2i_ranks,
)

__all__ = [
    "METRIC_KEYS",
    "PROTOCOLS",
    "Protocol",
    "ensemble_sims",
    "evaluate_protocol",
    "evaluate_sims",
    "format_metrics_table",
    "i2t_ranks",
    "mean_recall",
    "rank_metrics",
    "recall_curve",
    "t2i_ranks",
]
from .retrieval import encode_dataset, evaluate_model, mean_over_views, similarity_matrix  # noqa: E402

__all__ += ["encode_dataset", "evaluate_model", "mean_over_views", "similarity_matrix"]
