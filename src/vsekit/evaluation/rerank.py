"""A second stage at test time: query-bank normalisation of a similarity matrix against hubs.

Some gallery items (hubs) are close to very many queries and crowd every result list. Query-bank normalisation
(QB-Norm, Bogolin et al., CVPR 2022) measures each gallery item's hubness against a bank of queries that are not
the test queries (e.g. the training split's captions for text→image search) and divides it out with an inverted
softmax; its dynamic form (DIS) does so only for queries whose best item is a hub. ``benchmarks/rsicd_rerank.py``
measures it on RSICD; ``vsekit eval RUN --querybank train`` runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, DataError
from .metrics import evaluate_sims

__all__ = ["QueryBankSims", "evaluate_querybank", "querybank_normalize"]


def querybank_normalize(sims: np.ndarray, bank_sims: np.ndarray, beta: float, dynamic: bool = False) -> np.ndarray:
    """Scores of queries against a gallery, normalised by the gallery's similarities to a query bank.

    The inverted softmax scores query ``q`` against item ``g`` as ``beta·s(q, g) − log Σ_b exp(beta·s(b, g))``
    over the bank queries ``b``: an item close to many bank queries loses. With ``dynamic`` (DIS) only queries whose
    best plain item is a hub (the best item of at least one bank query) are normalised; the others keep their plain
    scores. Each query's ranking is what counts: rows are not comparable with each other.

    Args:
        sims: Q×G similarities of the queries to the gallery.
        bank_sims: B×G similarities of the bank queries (same modality as the queries) to the same gallery.
        beta: the inverse temperature (> 0).
        dynamic: DIS instead of the plain inverted softmax.

    Returns:
        Q×G float32 scores.

    Raises:
        ConfigError: for a beta that is not a positive number.
        DataError: if the two matrices disagree on the gallery, or the bank is empty.
    """
    if not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ConfigError(f"beta: expected a positive number, got {beta!r}")
    sims = np.asarray(sims, dtype=np.float32)
    bank = np.asarray(bank_sims, dtype=np.float32)
    if sims.ndim != 2 or bank.ndim != 2 or bank.shape[1] != sims.shape[1] or bank.shape[0] == 0:
        raise DataError(f"bank_sims: expected B×{sims.shape[-1]} similarities to the same gallery (B > 0), got {bank.shape}")
    top = bank.max(axis=0)
    lse = beta * top + np.log(np.exp(beta * (bank - top)).sum(axis=0))  # log Σ_b exp(beta·s(b, g)), per item g
    normalised = beta * sims - lse[None, :]
    if not dynamic:
        return normalised
    hubs = np.zeros(sims.shape[1], dtype=bool)
    hubs[bank.argmax(axis=1)] = True
    return np.where(hubs[sims.argmax(axis=1)][:, None], normalised, sims)


@dataclass(frozen=True)
class QueryBankSims:
    """The three similarity matrices that query-bank normalisation scores from: compute them once, then
    :meth:`evaluate` any number of forms and betas (the bank's matrices are the costly part).

    Attributes:
        sims: images × captions of the evaluated split.
        caption_bank: bank captions × images (the bank of the text→image queries).
        image_bank: bank images × captions (the bank of the image→text queries).
    """

    sims: np.ndarray
    caption_bank: np.ndarray
    image_bank: np.ndarray

    @classmethod
    def from_embeddings(
        cls,
        images: Any,
        captions: Any,
        bank_images: Any,
        bank_captions: Any,
        similarity: Callable[[Any, Any], np.ndarray] | None = None,
    ) -> QueryBankSims:
        """The matrices of a model's embeddings; ``similarity(a, b)`` = the len(a)×len(b) scores of the model
        (default: plain dot products, the cosine of normalised embeddings; pass the model's own for order
        embeddings, or an ensemble's mean over its members, whose embeddings are whatever it takes)."""
        similarity = similarity or _dot
        return cls(similarity(images, captions), similarity(images, bank_captions).T, similarity(bank_images, captions))

    def evaluate(self, beta: float, dynamic: bool = False, captions_per_image: int = 5) -> dict[str, float]:
        """Retrieval metrics of both directions after normalisation with ``beta`` (:func:`querybank_normalize`).

        Text→image ranks each caption against the images normalised by the bank captions' similarities to them;
        image→text ranks each image against the captions normalised by the bank images'. The metrics are those of
        :func:`vsekit.evaluation.evaluate_sims` (one fold).
        """
        t2i = querybank_normalize(self.sims.T, self.caption_bank, beta, dynamic).T  # queries = captions
        i2t = querybank_normalize(self.sims, self.image_bank, beta, dynamic)  # queries = images
        a, b = evaluate_sims(i2t, captions_per_image), evaluate_sims(t2i, captions_per_image)
        out = {**{k: v for k, v in a.items() if k.startswith("i2t")}, **{k: v for k, v in b.items() if k.startswith("t2i")}}
        out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
        return out


def evaluate_querybank(
    images: Any,
    captions: Any,
    bank_images: Any,
    bank_captions: Any,
    beta: float,
    dynamic: bool = False,
    captions_per_image: int = 5,
    similarity: Callable[[Any, Any], np.ndarray] | None = None,
) -> dict[str, float]:
    """Retrieval metrics of both directions after query-bank normalisation, from embeddings (one form and beta;
    for several, build :class:`QueryBankSims` once).

    Args:
        images, captions: N×E image and (N·k)×E caption embeddings of the evaluated split (or whatever
            ``similarity`` takes: an ensemble passes each member's embeddings).
        bank_images, bank_captions: embeddings of the bank (e.g. the training split), never the evaluated split.
        beta, dynamic: as :func:`querybank_normalize`.
        captions_per_image: k.
        similarity: as :meth:`QueryBankSims.from_embeddings`.
    """
    scores = QueryBankSims.from_embeddings(images, captions, bank_images, bank_captions, similarity)
    return scores.evaluate(beta, dynamic, captions_per_image)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T
