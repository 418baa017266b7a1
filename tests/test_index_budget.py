"""``backend="faiss:auto"``: sizes, the candidates and their budget by hand, the recall it records against an
independent exact search, a target it cannot reach, rows read from disk, and an index built end to end."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from vsekit.errors import ConfigError, DataError
from vsekit.index import ExactBackend, FaissBackend, Index, recall_at_k
from vsekit.index import budget
from vsekit.index.budget import (
    PROCESS_HEADROOM, AutoSettings, Candidate, add_rows, auto_settings, build_auto, candidates, coarse_lists, estimate,
    parse_size, train_rows, work_bytes,
)  # fmt: skip
from vsekit.index.rows import RerankedBackend, ShardRows, exact_topk

GIB, MIB = 1 << 30, 1 << 20


def _clustered(n: int, dim: int, clusters: int, seed: int, noise: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _shards(tmp_path, x: np.ndarray, size: int = 1500) -> list[np.ndarray]:
    """``x`` written as ``.npy`` shards of ``size`` rows and opened memory-mapped, as an index opens them."""
    out = []
    for s, a in enumerate(range(0, len(x), size)):
        np.save(tmp_path / f"emb-{s:05d}.npy", x[a : a + size])
        out.append(np.load(tmp_path / f"emb-{s:05d}.npy", mmap_mode="c"))
    return out


# -- sizes and settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, size",
    [("2GB", 2 * GIB), ("512MB", 512 * MIB), ("2GiB", 2 * GIB), ("1.5G", 3 * GIB // 2), (" 64 mb ", 64 * MIB),
     ("3000000", 3_000_000), (5 * MIB, 5 * MIB)],
)  # fmt: skip
def test_sizes_parse_in_powers_of_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["2XB", "", "GB", "two GB", "-1GB", "2 GB of RAM", "iB", "1KB", True, None, 2.5])
def test_bad_sizes_are_one_line_errors_naming_the_option(bad):
    with pytest.raises(ConfigError, match=r"^max_index_memory: expected") as e:
        parse_size(bad)
    assert "\n" not in str(e.value)


def test_settings_defaults_and_bad_recalls():
    assert auto_settings(None, None, 1000) == AutoSettings(2 * GIB, 0.9, 1000)
    assert auto_settings("512MB", 0.95, 10) == AutoSettings(512 * MIB, 0.95, 10)
    for bad in (0, 1.5, -0.1, "0.9", True):
        with pytest.raises(ConfigError, match=r"^min_recall: expected a recall@10 in \(0, 1\]"):
            auto_settings(None, bad, 10)


def test_build_options_take_a_budget_only_for_faiss_auto(tmp_path):
    """The options are checked before anything is read (the checkpoint does not exist)."""
    cases = [
        ({"backend": "exact", "max_index_memory": "2GB"}, r"^max_index_memory: only backend=faiss:auto"),
        ({"backend": "faiss:IVF4,Flat", "min_recall": 0.9}, r"^min_recall: only backend=faiss:auto"),
        ({"backend": "faiss:auto", "search_params": "nprobe=4"}, r"^search_params: faiss:auto chooses them"),
        ({"backend": "faiss:auto", "max_index_memory": "lots"}, r"^max_index_memory: expected a size"),
        ({"backend": "faiss:auto", "min_recall": 2}, r"^min_recall: expected a recall@10"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            Index.build(tmp_path / "none.pt", tmp_path, tmp_path / "idx", progress=False, **kwargs)


# -- the candidates and the budget, by hand -------------------------------------------------------------------


def test_candidates_and_their_memory_by_hand():
    assert coarse_lists(1_000_000) == 1024 and coarse_lists(100_000) == 256 and coarse_lists(4000) == 64
    assert coarse_lists(1000) == 16  # sqrt -> 32, but at most 1000 / 39 rows a list
    # 1M × 1024: 1024 lists, 8-bit codes of 32 to 512 bytes, each without then with OPQ, the smallest first
    big = candidates(1_000_000, 1024)
    assert [c.factory for c in big[:3]] == ["IVF1024,PQ32x8np", "OPQ32,IVF1024,PQ32x8np", "IVF1024,PQ64x8np"]
    assert [c.m for c in big] == [32, 32, 64, 64, 128, 128, 256, 256, 512, 512]
    # codes and ids (8 bytes) twice over, coarse centroids, 256 codewords of E floats, the OPQ rotation
    assert big[0].index_bytes(1_000_000, 1024) == 2 * 1_000_000 * (32 + 8) + 1024 * 1024 * 4 + 256 * 1024 * 4
    assert big[1].index_bytes(1_000_000, 1024) == big[0].index_bytes(1_000_000, 1024) + 1024 * 1024 * 4
    assert train_rows(1_000_000, 1024, 1024, 2 * GIB) == 65536
    assert train_rows(1_000_000, 1024, 1024, 512 * MIB) == 39 * 1024  # a quarter of the budget, but 39 rows a list
    # the build's buffers: the sample twice, three chunks of 16,384 rows, their exact scores for 1,000 queries,
    # FAISS's encoding tables (64 MiB: PQ64x8 adds 1,024 rows at a time, PQ32x8 2,048, PQ128x8 all 16,384)
    assert work_bytes(1_000_000, 1024, 65536, 1000) == 2 * 65536 * 4096 + 3 * 16384 * 4096 + 4 * 16384 * 1000 + 64 * MIB
    assert [add_rows(c, 1024) for c in big[::2]] == [2048, 1024, 16384, 16384, 16384]
    assert work_bytes(1_000_000, 1024, 65536, 5000) - work_bytes(1_000_000, 1024, 65536, 1000) == 4 * ((1 << 24) - 16384 * 1000)
    assert work_bytes(1_000_000, 1024, 65536, 1000, opq=True) == work_bytes(1_000_000, 1024, 65536, 1000) + 4 * 65536 * 4096
    # 4,000 × 32: 64 lists, 6-bit codes (4000 / 39 < 2^7 rows a codeword), m = 1 .. 16
    small = candidates(4000, 32)
    assert [c.factory for c in small[::2]] == [f"IVF64,PQ{m}x6np" for m in (1, 2, 4, 8, 16)]
    assert small[6].index_bytes(4000, 32) == 2 * 4000 * (6 + 8) + 64 * 32 * 4 + 64 * 32 * 4  # m = 8: 6 bytes a code
    assert work_bytes(4000, 32, 4000, 200) == 2 * 4000 * 128 + 3 * 4000 * 128 + 4 * 4000 * 200 + 64 * MIB
    assert candidates(999, 1024) == [Candidate(0, 0, 0, False)] and candidates(999, 8)[0].factory == "Flat"


def test_the_chooser_keeps_to_the_budget(tmp_path):
    x = _clustered(4000, 32, 40, 0)
    shards = _shards(tmp_path, x)
    # a budget of exactly PQ2's estimate and the process's headroom: PQ1 and PQ2 may be built; not the OPQ ones
    # (their training buffers)
    listed = candidates(4000, 32)
    sizes = {c.factory: estimate(c, 4000, 32, 4000, 200) for c in listed}
    limit = sizes["IVF64,PQ2x6np"] + PROCESS_HEADROOM
    assert limit == listed[2].index_bytes(4000, 32) + work_bytes(4000, 32, 4000, 200) + 512 * MIB
    assert {f for f, size in sizes.items() if size + PROCESS_HEADROOM <= limit} == {"IVF64,PQ1x6np", "IVF64,PQ2x6np"}
    entry = build_auto(shards, 32, AutoSettings(limit, 0.9, 200), tmp_path / "a.index")
    assert entry["auto"]["max_index_memory"] == limit and entry["auto"]["estimated_bytes"] + PROCESS_HEADROOM <= limit
    assert {t["factory"] for t in entry["auto"]["tried"]} <= {"IVF64,PQ1x6np", "IVF64,PQ2x6np"}
    assert entry["auto"]["process_headroom"] == PROCESS_HEADROOM == 512 * MIB
    assert entry["factory"] in ("IVF64,PQ1x6np", "IVF64,PQ2x6np")
    # too small for the smallest candidate: one line naming the option and the size needed. PQ1 needs
    # 2·4000·(1 + 8) + 2·64·32·4 bytes, the build 2·4000·128 + 3·4000·128 + 4·4000·200 (the sample is every row)
    # and 64 MiB of tables: 72,957,248 bytes, and the process 512 MiB: 581.58 MiB in all
    assert train_rows(4000, 64, 32, 100 * MIB) == 4000 and estimate(listed[0], 4000, 32, 4000, 200) == 72_957_248
    with pytest.raises(ConfigError, match=r"^max_index_memory: 100.00 MiB is too small for faiss:auto on 4000 rows of dimension 32: "
                                          r"the smallest index, IVF64,PQ1x6np, needs about 581.58 MiB$"):  # fmt: skip
        build_auto(shards, 32, AutoSettings(100 * MIB, 0.9, 200), tmp_path / "b.index")


# -- recall --------------------------------------------------------------------------------------------------


def test_the_recorded_recall_is_the_one_measured_against_exact_search(tmp_path):
    """The recall stored equals the recall@10 of the saved index, opened as an index opens it, against
    ExactBackend on the same held-out rows (each left out of its own ranking)."""
    x = _clustered(4000, 32, 40, 1)
    shards = _shards(tmp_path, x)
    entry = build_auto(shards, 32, auto_settings(None, 0.95, 300), tmp_path / "auto.index")
    rec = entry["recall"]
    assert rec["queries"] == 300 and rec["query_kind"] == "indexed items (self excluded)"
    assert rec["recall_at_10"] >= 0.95 and entry["search_params"].startswith("nprobe=") and entry["rerank"] >= 1
    backend = RerankedBackend(FaissBackend.load(tmp_path / "auto.index", entry["factory"], entry["search_params"]),
                              ShardRows(shards, 32), entry["rerank"])  # fmt: skip
    own = np.sort(np.random.default_rng(entry["auto"]["query_seed"]).choice(4000, 300, replace=False))
    _, exact = ExactBackend(shards, 32).search(x[own], 11)
    _, approx = backend.search(x[own], 11)
    drop = [[[v for v in r if v != o][:10] for r, o in zip(rows.tolist(), own.tolist())] for rows in (exact, approx)]
    assert rec["recall_at_10"] == pytest.approx(recall_at_k(*drop, k=10), abs=1e-4)
    # and the scores returned are exact inner products, best first
    scores, rows = backend.search(x[:5], 10)
    np.testing.assert_allclose(scores, np.take_along_axis(x[:5] @ x.T, rows, 1), rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_a_target_no_candidate_reaches_stops_the_build_with_the_best_recall(tmp_path, monkeypatch):
    """With one probe and no re-ranking no candidate reaches recall 0.999: every one is tried, then one line."""
    monkeypatch.setattr(budget, "RERANKS", (1,))
    monkeypatch.setattr(budget, "MAX_NPROBE", 1)
    shards = _shards(tmp_path, _clustered(3000, 16, 30, 2))
    limit = estimate(candidates(3000, 16)[4], 3000, 16, 3000, 100) + PROCESS_HEADROOM  # PQ1, PQ2, PQ4: quick
    with pytest.raises(ConfigError) as e:
        build_auto(shards, 16, AutoSettings(limit, 0.999, 100), tmp_path / "c.index", "images")
    message = str(e.value)
    assert "\n" not in message and not (tmp_path / "c.index").exists()
    assert re.match(r"^min_recall: no index within max_index_memory=\d+\.\d\d MiB reaches recall@10 0.999 on the 3000 images; "
                    r"the best was 0\.\d{4} \(IVF64,PQ\d+x6np, nprobe=1, rerank=1\): raise max_index_memory, lower min_recall "
                    r"or use backend=exact$", message), message  # fmt: skip


def test_small_collections_get_a_flat_index(tmp_path):
    x = _clustered(300, 16, 5, 3)
    entry = build_auto(_shards(tmp_path, x, 100), 16, auto_settings(None, None, 1000), tmp_path / "f.index", "texts")
    assert entry["factory"] == "Flat" and entry["rerank"] is None and entry["search_params"] == ""
    assert entry["recall"]["recall_at_10"] == 1.0 and entry["recall"]["queries"] == 300


# -- rows from disk ------------------------------------------------------------------------------------------


def test_rows_read_from_disk_equal_the_arrays(tmp_path):
    x = _clustered(1000, 8, 4, 4)
    for shards in (_shards(tmp_path, x, 300), [x[:300], x[300:]]):  # memory maps read by file; arrays by index
        rows = ShardRows(shards, 8)
        pick = np.array([999, 0, 299, 300, 301, 5, 5, 600])
        np.testing.assert_array_equal(rows.gather(pick), x[pick])
        assert rows.gather([]).shape == (0, 8)
        got = list(rows.chunks(128))
        assert [a for a, _ in got][:4] == [0, 128, 256, 300]  # chunks never cross a shard
        np.testing.assert_array_equal(np.concatenate([c for _, c in got]), x)
        with pytest.raises(DataError, match=r"^rows: expected row numbers in 0\.\.999"):
            rows.gather([1000])
        s1, r1 = exact_topk(rows, x[:20], 12, chunk=64)
        s2, r2 = ExactBackend(shards, 8).search(x[:20], 12)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-7)


# -- end to end ------------------------------------------------------------------------------------------------


def test_an_index_built_with_faiss_auto_finds_the_exact_top_1(tmp_path):
    from tests.conftest import tiny_config
    from vsekit.checkpoint import save_checkpoint
    from vsekit.data import build_vocab, write_precomp
    from vsekit.models import create_model
    import torch

    cfg = tiny_config()
    rng = np.random.default_rng(0)
    n = 1500
    centres = rng.standard_normal((30, 1, cfg.model.image.img_dim))
    feats = (centres[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, 3, cfg.model.image.img_dim))).astype(np.float32)
    captions = [f"a {w} thing number {i}" for i, w in enumerate(["red", "blue", "green", "small", "large"] * (2 * n // 5))]
    write_precomp(tmp_path / "feats", "test", feats, captions)
    torch.manual_seed(0)
    model = create_model(cfg.model, build_vocab(captions, min_count=1))
    save_checkpoint(tmp_path / "m.pt", model, cfg)
    idx = Index.build(tmp_path / "m.pt", tmp_path / "feats", tmp_path / "idx", backend="faiss:auto",
                      max_index_memory="768MB", min_recall=0.9, recall_queries=200, progress=False)  # fmt: skip
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    image = meta["parts"]["image"]
    assert meta["backend"] == "faiss:auto" and image["factory"].startswith("IVF") and image["rerank"] >= 1
    assert image["auto"]["max_index_memory"] == 768 * MIB and image["auto"]["min_recall"] == 0.9
    assert image["recall"]["recall_at_10"] >= 0.9 and idx.stats()["recall_at_10"]["image"] == image["recall"]["recall_at_10"]
    loaded = Index.load(tmp_path / "idx")
    part = loaded._parts["image"]
    assert isinstance(part.backend, RerankedBackend) and part.backend.search_params == image["search_params"]
    same = 0
    probes = range(0, n, 10)
    ids = part.columns["id"]
    for i in probes:  # "search with this result": the item itself is left out
        exact = [r for r in part.exact.search(part.exact.row(i), 2)[1][0].tolist() if r != i]
        same += loaded.search(item=ids[i], k=1)[0].id == ids[exact[0]]
    assert same >= 0.9 * len(probes), same
    # a rebuild under the same budget keeps the files; another budget chooses again
    again = Index.build(tmp_path / "m.pt", tmp_path / "feats", tmp_path / "idx", backend="faiss:auto",
                        max_index_memory="768MB", min_recall=0.9, recall_queries=200, progress=False)  # fmt: skip
    assert again.meta["parts"]["image"]["folder"] == image["folder"]
    other = Index.build(tmp_path / "m.pt", tmp_path / "feats", tmp_path / "idx", backend="faiss:auto",
                        max_index_memory="640MB", min_recall=0.9, recall_queries=200, progress=False)  # fmt: skip
    assert other.meta["parts"]["image"]["folder"] != image["folder"]
    assert other.meta["parts"]["image"]["auto"]["max_index_memory"] == 640 * MIB


def test_the_encode_command_passes_the_budget_and_the_target(tmp_path, capsys):
    """``vsekit encode --max-index-memory SIZE --min-recall R`` reach the options (checked before anything is read)."""
    from vsekit.cli import main

    base = ["encode", str(tmp_path / "none.pt"), str(tmp_path), "--out", str(tmp_path / "idx"), "--quiet"]
    for extra, message in [
        (["--max-index-memory", "2GB"], "max_index_memory: only backend=faiss:auto"),
        (["--backend", "faiss:auto", "--max-index-memory", "lots"], "max_index_memory: expected a size such as 2GB"),
        (["--backend", "faiss:auto", "--min-recall", "1.5"], "min_recall: expected a recall@10 in (0, 1]"),
    ]:
        try:
            code = main(base + extra)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
