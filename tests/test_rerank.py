"""Query-bank normalisation (:func:`vsekit.evaluation.querybank_normalize`), computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vsekit.errors import ConfigError, DataError
from vsekit.evaluation import querybank_normalize

# two gallery items; item 0 is a hub: both bank queries find it first
BANK = np.array([[0.9, 0.1], [0.8, 0.2]])
QUERIES = np.array([[0.50, 0.45],   # finds the hub first
                    [0.10, 0.30]])  # finds item 1 first  # fmt: skip


def test_the_inverted_softmax_by_hand():
    lse = [math.log(math.exp(0.9) + math.exp(0.8)), math.log(math.exp(0.1) + math.exp(0.2))]
    want = [[0.50 - lse[0], 0.45 - lse[1]], [0.10 - lse[0], 0.30 - lse[1]]]
    got = querybank_normalize(QUERIES, BANK, beta=1.0)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[0].argmax() == 1  # the hub loses the first query to item 1
    got = querybank_normalize(QUERIES, BANK, beta=20.0)
    lse20 = [20 * 0.9 + math.log(1 + math.exp(-2.0)), 20 * 0.2 + math.log(1 + math.exp(-2.0))]
    np.testing.assert_allclose(got[1], [20 * 0.10 - lse20[0], 20 * 0.30 - lse20[1]], atol=1e-4)  # no overflow


def test_the_dynamic_form_normalises_only_queries_whose_best_item_is_a_hub():
    got = querybank_normalize(QUERIES, BANK, beta=1.0, dynamic=True)
    np.testing.assert_allclose(got[0], querybank_normalize(QUERIES, BANK, beta=1.0)[0], atol=1e-6)
    np.testing.assert_allclose(got[1], QUERIES[1], atol=1e-6)  # its best item is no hub: plain scores


@pytest.mark.parametrize("beta", [0, -1.0, float("nan"), "5"])
def test_bad_beta_is_one_line(beta):
    with pytest.raises(ConfigError, match="beta: expected a positive number"):
        querybank_normalize(QUERIES, BANK, beta=beta)


def test_a_bank_of_another_gallery_is_refused():
    with pytest.raises(DataError, match=r"bank_sims: expected B×2 similarities"):
        querybank_normalize(QUERIES, np.zeros((3, 5)), beta=1.0)
    with pytest.raises(DataError, match="bank_sims"):
        querybank_normalize(QUERIES, np.zeros((0, 2)), beta=1.0)


def test_evaluate_querybank_normalises_each_direction_against_its_own_bank():
    from vsekit.evaluation import evaluate_querybank, evaluate_sims

    rng = np.random.default_rng(0)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    images, bank_images = unit(rng.normal(size=(6, 4))), unit(rng.normal(size=(9, 4)))
    captions, bank_captions = unit(rng.normal(size=(12, 4))), unit(rng.normal(size=(20, 4)))
    got = evaluate_querybank(images, captions, bank_images, bank_captions, beta=3.0, captions_per_image=2)
    # by hand: each direction's scores, normalised with the bank of its own queries' modality
    sims = images @ captions.T
    i2t = np.array([[3 * sims[i, c] - math.log(sum(math.exp(3 * float(b @ captions[c])) for b in bank_images))
                     for c in range(12)] for i in range(6)])  # fmt: skip
    t2i = np.array([[3 * sims[i, c] - math.log(sum(math.exp(3 * float(b @ images[i])) for b in bank_captions))
                     for c in range(12)] for i in range(6)])  # fmt: skip
    want_i2t, want_t2i = evaluate_sims(i2t, 2), evaluate_sims(t2i, 2)
    for k in ("r1", "r5", "r10", "medr", "meanr"):
        assert got[f"i2t_{k}"] == pytest.approx(want_i2t[f"i2t_{k}"])
        assert got[f"t2i_{k}"] == pytest.approx(want_t2i[f"t2i_{k}"])
    assert got["rsum"] == pytest.approx(sum(got[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
    assert got != {k: v for k, v in evaluate_sims(sims, 2).items() if k in got}  # the banks change the ranking
    # a model's own similarity (here: twice the dot product, as an order-embedding model would give its own)
    doubled = evaluate_querybank(images, captions, bank_images, bank_captions, beta=1.5, captions_per_image=2,
                                 similarity=lambda a, b: 2 * (a @ b.T))  # fmt: skip
    assert doubled == pytest.approx(got)
