"""Tests of vsekit.evaluation.metrics against a plain per-query reference and hand-made cases."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from vsekit.errors import ConfigError, DataError
from vsekit.evaluation import (
    METRIC_KEYS,
    PROTOCOLS,
    Protocol,
    ensemble_sims,
    evaluate_protocol,
    evaluate_sims,
    format_metrics_table,
    i2t_ranks,
    rank_metrics,
    t2i_ranks,
)
from vsekit.evaluation import metrics as metrics_mod

# --------------------------------------------------------------------------- plain reference


def plain_i2t(sims: np.ndarray, k: int) -> list[int]:
    """Per image: sort the row by descending score, ground truth last among ties, and take
    the first position of any of its k captions."""
    n, m = sims.shape
    ranks = []
    for i in range(n):
        is_gt = np.arange(m) // k == i
        order = np.lexsort((is_gt, -sims[i]))  # primary: score descending; ties: gt last
        ranks.append(int(np.flatnonzero(is_gt[order])[0]))
    return ranks


def plain_t2i(sims: np.ndarray, k: int) -> list[int]:
    """Per caption: sort the column by descending score, its image last among ties."""
    n, m = sims.shape
    ranks = []
    for j in range(m):
        is_gt = np.arange(n) == j // k
        order = np.lexsort((is_gt, -sims[:, j]))
        ranks.append(int(np.flatnonzero(is_gt[order])[0]))
    return ranks


def plain_metrics(ranks: list[int]) -> dict[str, float]:
    out = {f"r{K}": 100.0 * sum(r < K for r in ranks) / len(ranks) for K in (1, 5, 10)}
    out["medr"] = math.floor(statistics.median(ranks)) + 1
    out["meanr"] = statistics.mean(ranks) + 1
    return out


def plain_evaluate(sims: np.ndarray, k: int, folds: int) -> dict[str, float]:
    n = sims.shape[0] // folds
    per_fold = []
    for f in range(folds):
        block = sims[f * n : (f + 1) * n, f * n * k : (f + 1) * n * k]
        res = {f"i2t_{a}": b for a, b in plain_metrics(plain_i2t(block, k)).items()}
        res |= {f"t2i_{a}": b for a, b in plain_metrics(plain_t2i(block, k)).items()}
        res["rsum"] = sum(res[f"{d}_r{K}"] for d in ("i2t", "t2i") for K in (1, 5, 10))
        per_fold.append(res)
    return {key: sum(r[key] for r in per_fold) / folds for key in METRIC_KEYS}


def assert_metrics_equal(got: dict[str, float], expected: dict[str, float]) -> None:
    assert list(got) == list(METRIC_KEYS)
    assert all(type(v) is float for v in got.values())
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


@pytest.fixture(params=[None, 7], ids=["one-chunk", "many-chunks"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test with the default chunking and with chunks of a single row."""
    if request.param is not None:
        monkeypatch.setattr(metrics_mod, "_CHUNK_ELEMENTS", request.param)


# --------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("folds", [1, 5])
@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "rounded"])
def test_matches_plain_loop(k: int, folds: int, ties: bool, chunking: None) -> None:
    rng = np.random.default_rng(100 * k + 10 * folds + ties)
    n = 30
    sims = rng.standard_normal((n, n * k)).astype(np.float32)
    # Make the ground truth a bit stronger, so recalls are neither all 0 nor all 100.
    sims[np.arange(n * k) // k, np.arange(n * k)] += 1.0
    if ties:
        sims = np.round(sims, 1)  # many exact ties, including ties with the ground truth
    assert_metrics_equal(evaluate_sims(sims, k, folds), plain_evaluate(sims, k, folds))
    np.testing.assert_array_equal(i2t_ranks(sims, k), plain_i2t(sims, k))
    np.testing.assert_array_equal(t2i_ranks(sims, k), plain_t2i(sims, k))


def test_rank_arrays_dtype_and_length() -> None:
    sims = np.random.default_rng(0).random((4, 12))
    r_i, r_t = i2t_ranks(sims, 3), t2i_ranks(sims, 3)
    assert r_i.shape == (4,) and r_t.shape == (12,)
    assert r_i.dtype == np.int64 and r_t.dtype == np.int64


# --------------------------------------------------------------------------- hand-made cases


def test_two_images_two_captions_by_hand() -> None:
    # Image 0 owns captions 0, 1; image 1 owns captions 2, 3.
    sims = np.array(
        [
            [0.9, 0.1, 0.8, 0.3],  # sorted: c0 c2 c3 c1 -> gt c0 at 0 -> i2t rank 0
            [0.2, 0.7, 0.6, 0.5],  # sorted: c1 c2 c3 c0 -> gt c2 at 1 -> i2t rank 1
        ]
    )
    # t2i per column: c0 [0.9, 0.2] own img0 top -> 0;  c1 [0.1, 0.7] img1 above img0 -> 1;
    #                 c2 [0.8, 0.6] img0 above img1 -> 1; c3 [0.3, 0.5] own img1 top -> 0.
    np.testing.assert_array_equal(i2t_ranks(sims, 2), [0, 1])
    np.testing.assert_array_equal(t2i_ranks(sims, 2), [0, 1, 1, 0])
    # i2t ranks [0, 1]: R@1 50, R@5 100, R@10 100, median 0.5 -> medr 1, meanr 1.5.
    # t2i ranks [0, 1, 1, 0]: the same values. rsum = 50+100+100+50+100+100 = 500.
    expected = {
        "i2t_r1": 50.0, "i2t_r5": 100.0, "i2t_r10": 100.0, "i2t_medr": 1.0, "i2t_meanr": 1.5,
        "t2i_r1": 50.0, "t2i_r5": 100.0, "t2i_r10": 100.0, "t2i_medr": 1.0, "t2i_meanr": 1.5,
        "rsum": 500.0,
    }  # fmt: skip
    assert_metrics_equal(evaluate_sims(sims, captions_per_image=2), expected)


def test_staircase_by_hand() -> None:
    # k=1, 12 images: sims[i, j] = 1 for j < i, 0.5 on the diagonal, 0 above it.
    # Row i: the i captions j < i score 1 > 0.5, so the i2t rank of image i is i -> ranks 0..11.
    # Column j: the images i > j score 1 > 0.5, so the t2i rank of caption j is 11 - j.
    n = 12
    sims = np.tril(np.ones((n, n)), -1) + 0.5 * np.eye(n)
    np.testing.assert_array_equal(i2t_ranks(sims, 1), np.arange(n))
    np.testing.assert_array_equal(t2i_ranks(sims, 1), np.arange(n)[::-1])
    # Ranks 0..11: R@1 = 100/12, R@5 = 500/12, R@10 = 1000/12, median 5.5 -> medr 6, mean 5.5 -> 6.5.
    res = evaluate_sims(sims, captions_per_image=1)
    for d in ("i2t", "t2i"):
        assert res[f"{d}_r1"] == pytest.approx(100 / 12)
        assert res[f"{d}_r5"] == pytest.approx(500 / 12)
        assert res[f"{d}_r10"] == pytest.approx(1000 / 12)
        assert res[f"{d}_medr"] == 6.0
        assert res[f"{d}_meanr"] == 6.5
    assert res["rsum"] == pytest.approx(2 * 1600 / 12)


def test_all_ties_rank_last(chunking: None) -> None:
    # Every candidate ties with the ground truth (a collapsed model): ties count against the ground
    # truth, so every query gets the worst rank, never a perfect score.
    sims = np.full((6, 18), 0.25, dtype=np.float32)
    assert (i2t_ranks(sims, 3) == 15).all() and (t2i_ranks(sims, 3) == 5).all()
    res = evaluate_sims(sims, 3)
    # only t2i R@10 is hit: 6 images, so the last rank 5 is < 10
    assert res["rsum"] == 100.0 and res["i2t_medr"] == 16.0 and res["t2i_meanr"] == 6.0
    assert evaluate_sims(np.zeros((100, 500)), 5)["rsum"] == 0.0


def test_i2t_uses_best_ground_truth_caption() -> None:
    # Image 0's captions 0, 1 score 0.1 and 0.6: two impostors (0.7, 0.65) beat the better one
    # -> rank 2, although three captions (0.6, 0.7, 0.65) beat the worse one (rank 3).
    # Image 1's captions 2, 3 both score 1.0, the row maximum -> rank 0.
    sims = np.array([[0.1, 0.6, 0.7, 0.65], [0.0, 0.0, 1.0, 1.0]])
    assert i2t_ranks(sims, 2).tolist() == [2, 0]


# --------------------------------------------------------------------------- rank_metrics


@pytest.mark.parametrize(
    ("ranks", "medr"),
    [
        ([0, 1, 2, 3], 2.0),  # median 1.5 -> floor 1 -> medr 2
        ([0, 0, 3, 7], 2.0),  # median 1.5 -> medr 2
        ([1, 2], 2.0),  # median 1.5 -> medr 2
        ([0, 2], 2.0),  # median 1.0 -> medr 2
        ([4], 5.0),
        ([0, 5, 9], 6.0),  # odd count: the middle rank 5 -> medr 6
    ],
)
def test_medr_floor_convention(ranks: list[int], medr: float) -> None:
    assert rank_metrics(ranks)["medr"] == medr


def test_rank_metrics_values() -> None:
    # Ranks [0, 1, 2, 3]: one < 1, four < 5 and < 10, mean 1.5 -> meanr 2.5.
    assert rank_metrics(np.array([0, 1, 2, 3])) == {"r1": 25.0, "r5": 100.0, "r10": 100.0, "medr": 2.0, "meanr": 2.5}
    assert rank_metrics(torch.tensor([0, 9, 10, 20]))["r10"] == 50.0


@pytest.mark.parametrize("bad", [[], [[0, 1]], [0, -1]])
def test_rank_metrics_rejects_bad_ranks(bad: list) -> None:
    with pytest.raises(DataError, match="ranks"):
        rank_metrics(bad)


# --------------------------------------------------------------------------- inputs and folds


def test_torch_and_numpy_inputs_agree() -> None:
    rng = np.random.default_rng(1)
    sims = np.round(rng.random((20, 60)), 2).astype(np.float32)
    expected = evaluate_sims(sims, 3, folds=2)
    assert evaluate_sims(torch.from_numpy(sims), 3, folds=2) == expected
    assert evaluate_sims(torch.from_numpy(sims).double(), 3, folds=2) == expected
    assert evaluate_sims(sims.astype(np.float64), 3, folds=2) == expected
    # Non-contiguous and negative-stride views of the same values.
    assert evaluate_sims(np.asfortranarray(sims), 3, folds=2) == expected
    assert evaluate_sims(sims[::-1, ::-1][::-1, ::-1], 3, folds=2) == expected
    assert evaluate_sims(torch.from_numpy(sims.T.copy()).T, 3, folds=2) == expected
    assert evaluate_sims(torch.from_numpy(sims).requires_grad_(), 3, folds=2) == expected
    np.testing.assert_array_equal(t2i_ranks(torch.from_numpy(sims), 3), t2i_ranks(sims, 3))


def test_half_precision_inputs() -> None:
    # Scores on a 1/8 grid are exact in float16 and bfloat16, so all dtypes must agree.
    sims = np.random.default_rng(5).integers(0, 8, (10, 30)) / 8
    expected = evaluate_sims(sims, 3)
    assert evaluate_sims(sims.astype(np.float16), 3) == expected
    assert evaluate_sims(torch.from_numpy(sims).half(), 3) == expected
    assert evaluate_sims(torch.from_numpy(sims).bfloat16(), 3) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input() -> None:
    sims = np.random.default_rng(6).random((10, 50)).astype(np.float32)
    assert evaluate_sims(torch.from_numpy(sims).cuda(), folds=2) == evaluate_sims(sims, folds=2)


def test_integer_scores_are_accepted() -> None:
    sims = np.array([[3, 1, 2, 2], [0, 5, 4, 4]])
    assert evaluate_sims(sims, 2) == evaluate_sims(sims.astype(np.float32), 2)


def test_five_folds_average_separate_blocks() -> None:
    rng = np.random.default_rng(2)
    n, k = 10, 5
    sims = rng.random((5 * n, 5 * n * k))
    blocks = [evaluate_sims(sims[f * n : (f + 1) * n, f * n * k : (f + 1) * n * k], k) for f in range(5)]
    res = evaluate_sims(sims, k, folds=5)
    for key in METRIC_KEYS:
        assert res[key] == pytest.approx(np.mean([b[key] for b in blocks]))
    recalls = sum(res[f"{d}_r{K}"] for d in ("i2t", "t2i") for K in (1, 5, 10))
    assert res["rsum"] == pytest.approx(recalls)
    # Off-diagonal blocks are ignored: scrambling them changes nothing.
    scrambled = sims.copy()
    scrambled[:n, n * k :] = 10.0
    assert evaluate_sims(scrambled, k, folds=5) == res
    assert evaluate_sims(scrambled, k, folds=1) != evaluate_sims(sims, k, folds=1)


@pytest.mark.parametrize(
    ("sims", "kwargs", "match"),
    [
        (np.zeros(10), {}, r"sims: expected a 2-D"),
        (np.zeros((2, 3, 5)), {}, r"sims: expected a 2-D"),
        (np.zeros((4, 19)), {}, r"sims: expected 4 x 20"),
        (np.zeros((4, 8)), {"captions_per_image": 3}, r"sims: expected 4 x 12"),
        (np.zeros((0, 0)), {}, r"at least one image"),
        (np.zeros((6, 30)), {"folds": 4}, r"6 images cannot be split into 4 equal folds"),
        (np.zeros((2, 10)), {"folds": 0}, r"folds: expected a positive integer"),
        (np.zeros((2, 10)), {"captions_per_image": 0}, r"captions_per_image: expected a positive integer"),
        (np.zeros((2, 10), dtype=bool), {}, r"sims: expected a real-valued matrix"),
        (np.array([["a"] * 5]), {}, r"sims: expected a real-valued matrix"),
    ],
)
def test_bad_inputs_raise_data_error(sims: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        evaluate_sims(sims, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fn", [evaluate_sims, i2t_ranks, t2i_ranks])
def test_nan_raises(fn) -> None:  # noqa: ANN001
    sims = np.zeros((3, 15), dtype=np.float32)
    sims[2, 7] = np.nan
    with pytest.raises(DataError, match="sims: contains NaN"):
        fn(sims)
    with pytest.raises(DataError, match="NaN"):
        fn(torch.from_numpy(sims))


def test_infinities_without_nan_are_fine() -> None:
    # +inf and -inf together make the cheap sum check NaN; the exact check must still pass.
    sims = np.zeros((2, 2))
    sims[0, 0], sims[1, 0] = np.inf, -np.inf
    assert i2t_ranks(sims, 1).tolist() == [0, 0] and t2i_ranks(sims, 1).tolist() == [0, 1]  # column 1 ties


# --------------------------------------------------------------------------- ensembles


def test_ensemble_equal_and_weighted() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random((4, 20)), rng.random((4, 20))
    np.testing.assert_allclose(ensemble_sims([a, b]), (a + b) / 2)
    np.testing.assert_allclose(ensemble_sims([a, b], weights=[3, 1]), 0.75 * a + 0.25 * b)
    np.testing.assert_allclose(ensemble_sims([a]), a)
    out = ensemble_sims([torch.from_numpy(a), b])
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), (a + b) / 2)
    a32 = a.astype(np.float32)
    assert ensemble_sims([a32, a32]).dtype == np.float32
    assert ensemble_sims([a32, a]).dtype == np.float64
    # The inputs are untouched.
    np.testing.assert_array_equal(a32, a.astype(np.float32))


def test_ensemble_errors() -> None:
    a = np.zeros((2, 10))
    with pytest.raises(DataError, match="at least one"):
        ensemble_sims([])
    with pytest.raises(DataError, match=r"sims_list\[1\]: expected shape \(2, 10\)"):
        ensemble_sims([a, np.zeros((2, 5))])
    with pytest.raises(ConfigError, match="expected 2 weights"):
        ensemble_sims([a, a], weights=[1.0])
    with pytest.raises(ConfigError, match="non-negative"):
        ensemble_sims([a, a], weights=[1.0, -1.0])
    with pytest.raises(ConfigError, match="positive sum"):
        ensemble_sims([a, a], weights=[0, 0])


# --------------------------------------------------------------------------- protocols


def test_protocol_table() -> None:
    assert set(PROTOCOLS) == {"coco1k", "coco5k", "f30k", "kcaptions"}
    assert (PROTOCOLS["coco1k"].folds, PROTOCOLS["coco1k"].captions_per_image, PROTOCOLS["coco1k"].num_images) == (
        5,
        5,
        5000,
    )
    assert (PROTOCOLS["coco5k"].folds, PROTOCOLS["coco5k"].num_images) == (1, 5000)
    assert (PROTOCOLS["f30k"].folds, PROTOCOLS["f30k"].num_images) == (1, 1000)
    assert PROTOCOLS["kcaptions"].folds == 1 and PROTOCOLS["kcaptions"].num_images is None
    assert all(name == p.name and p.description for name, p in PROTOCOLS.items())
    with pytest.raises(AttributeError):
        PROTOCOLS["f30k"].folds = 2  # type: ignore[misc]


def test_evaluate_protocol() -> None:
    rng = np.random.default_rng(4)
    sims = rng.random((1000, 5000)).astype(np.float32)
    assert evaluate_protocol(sims, "f30k") == evaluate_sims(sims, 5, folds=1)
    small = rng.random((10, 30))
    assert evaluate_protocol(small, "kcaptions") == evaluate_sims(small, 3)  # k inferred
    custom = Protocol("tiny1k", folds=5, captions_per_image=3, description="test", num_images=10)
    assert evaluate_protocol(small, custom) == evaluate_sims(small, 3, folds=5)


def test_evaluate_protocol_errors() -> None:
    with pytest.raises(DataError, match="coco1k expects 5000 images, got 1000"):
        evaluate_protocol(np.zeros((1000, 5000)), "coco1k")
    with pytest.raises(DataError, match="f30k expects 1000 images, got 10"):
        evaluate_protocol(np.zeros((10, 50)), "f30k")
    with pytest.raises(DataError, match="kcaptions expects k\\*N captions"):
        evaluate_protocol(np.zeros((10, 25)), "kcaptions")
    with pytest.raises(ConfigError, match="unknown 'coco2k', expected one of coco1k"):
        evaluate_protocol(np.zeros((10, 50)), "coco2k")


# --------------------------------------------------------------------------- table


def test_format_metrics_table() -> None:
    base = dict.fromkeys(METRIC_KEYS, 0.0)
    results = {"vse++": base | {"i2t_r1": 41.234, "rsum": 402.26}, "gpo-ensemble": base | {"t2i_medr": 2.0}}
    text = format_metrics_table(results, title="COCO 5K")
    lines = text.splitlines()
    assert lines[0] == "COCO 5K" and lines[1] == ""
    table = lines[2:]
    assert len(table) == 4 and len({len(line) for line in table}) == 1  # aligned
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["model", "i2t R@1", "R@5", "R@10", "medr", "t2i R@1", "R@5", "R@10", "medr", "rsum"]
    row = [c.strip() for c in table[2].strip("|").split("|")]
    assert row[0] == "vse++" and row[1] == "41.2" and row[-1] == "402.3"
    assert [c.strip() for c in table[3].strip("|").split("|")][8] == "2.0"
    assert format_metrics_table(results).splitlines()[0].startswith("| model")
    with pytest.raises(DataError, match=r"results\['bad'\]: missing metric\(s\) rsum"):
        format_metrics_table({"bad": {k: 0.0 for k in METRIC_KEYS if k != "rsum"}})


def test_recall_curve_and_mean_recall(tmp_path) -> None:
    from vsekit.evaluation import mean_recall, recall_curve
    from vsekit.plots import plot_recall_curves

    # 3 images, 1 caption each; i2t ranks [0, 2, 1], t2i ranks [0, 1, 1]
    sims = np.array([[0.9, 0.1, 0.2], [0.8, 0.3, 0.5], [0.1, 0.9, 0.4]])
    assert i2t_ranks(sims, 1).tolist() == [0, 2, 1] and t2i_ranks(sims, 1).tolist() == [0, 1, 1]
    c = recall_curve(sims, 1, max_k=4)
    assert c["k"].tolist() == [1, 2, 3, 4]
    assert c["i2t"].tolist() == pytest.approx([100 / 3, 200 / 3, 100, 100])
    assert c["t2i"].tolist() == pytest.approx([100 / 3, 100, 100, 100])
    # the curve agrees with evaluate_sims at K = 1, 5, 10 on a random matrix
    rng = np.random.default_rng(0)
    big = rng.standard_normal((40, 200))
    m, c = evaluate_sims(big, 5), recall_curve(big, 5, max_k=10)
    for k in (1, 5, 10):
        assert c["i2t"][k - 1] == pytest.approx(m[f"i2t_r{k}"]) and c["t2i"][k - 1] == pytest.approx(m[f"t2i_r{k}"])
    assert mean_recall(m) == pytest.approx(sum(m[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)) / 6)
    assert plot_recall_curves({"model": c}, tmp_path / "rk.png").stat().st_size > 1000
    with pytest.raises(DataError, match="max_k"):
        recall_curve(big, 5, max_k=0)
