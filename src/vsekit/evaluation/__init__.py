"""Evaluation: retrieval metrics over image-text similarity matrices (:mod:`.metrics`), and a model's
similarities on a dataset (:mod:`.retrieval`), and query-bank normalisation at test time (:mod:`.rerank`)."""

from . import metrics
from .metrics import *  # noqa: F403  (the names of metrics.__all__)
from .rerank import QueryBankSims, evaluate_querybank, querybank_normalize
from .retrieval import encode_dataset, evaluate_model, mean_over_views, similarity_matrix

__all__ = [*metrics.__all__, "QueryBankSims", "encode_dataset", "evaluate_model", "evaluate_querybank", "mean_over_views",
           "querybank_normalize", "similarity_matrix"]
