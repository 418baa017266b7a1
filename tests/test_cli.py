"""The CLI run as a subprocess: training, evaluation, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vsekit.data import write_precomp

from .conftest import TINY


def run_cli(*args: str, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vsekit", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_train_then_eval(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("train", "--preset", "demo_gpo", "--run-dir", str(run), "--quiet", "epochs=1", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stdout and "best validation rsum" in proc.stdout
    proc = run_cli("eval", str(run), "--split", "test", "--json", str(tmp_path / "m.json"), "--save-sims", str(tmp_path / "s.npy"))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"i2t_r1", "t2i_r10", "rsum"}
    assert "rsum" in proc.stdout
    sims = np.load(tmp_path / "s.npy")
    assert sims.shape == (100, 500)
    # an ensemble of two copies of the same matrix gives the same metrics
    proc = run_cli("eval", "--sims", str(tmp_path / "s.npy"), str(tmp_path / "s.npy"), "--json", str(tmp_path / "e.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "e.json").read_text()) == pytest.approx(metrics)
    _check_querybank_eval(run, tmp_path, metrics)


def _check_querybank_eval(run, tmp_path, plain) -> None:
    """`vsekit eval --querybank train`: one row per form and beta, each = the library's QB-Norm on the embeddings."""
    import vsekit
    from vsekit.checkpoint import config_from_checkpoint, read_checkpoint
    from vsekit.data.factory import build_dataset
    from vsekit.evaluation import encode_dataset, evaluate_querybank

    out = tmp_path / "qb.json"
    proc = run_cli("eval", str(run), "--split", "test", "--querybank", "train", "--querybank-beta", "5,20",
                   "--querybank-form", "is,dis", "--json", str(out), "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert list(rows) == ["plain", "QB-Norm IS beta=5", "QB-Norm IS beta=20", "QB-Norm DIS beta=5", "QB-Norm DIS beta=20"]
    assert rows["plain"] == pytest.approx(plain) and "query bank: split 'train'" in proc.stdout
    cfg = config_from_checkpoint(read_checkpoint(str(run)))
    model = vsekit.load(str(run))
    test, bank = (encode_dataset(model, build_dataset(cfg.data, s, evaluation=True)) for s in ("test", "train"))
    want = evaluate_querybank(*(t.numpy() for t in (*test, *bank)), beta=20.0, dynamic=True)
    assert rows["QB-Norm DIS beta=20"] == pytest.approx(want, abs=1e-6)
    assert rows["QB-Norm IS beta=5"] != rows["plain"]
    # --querybank-cache: the bank's embeddings are kept and reused while the checkpoint is the same file
    cache, again = tmp_path / "bank.npz", tmp_path / "qb2.json"
    args = ("eval", str(run), "--split", "test", "--querybank", "train", "--querybank-form", "dis", "--quiet",
            "--querybank-cache", str(cache), "--json", str(again))  # fmt: skip
    assert run_cli(*args).returncode == 0 and json.loads(again.read_text())["QB-Norm DIS beta=20"] == pytest.approx(want, abs=1e-6)
    with np.load(cache) as z:
        stored = dict(z)
    np.savez(cache, **{**stored, "captions": -stored["captions"]})  # the same key: read back as it is
    assert run_cli(*args).returncode == 0 and json.loads(again.read_text())["QB-Norm DIS beta=20"] != pytest.approx(want, abs=1e-6)
    ckpt = run / "best.pt"
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 10**9))  # another checkpoint: embedded again
    assert run_cli(*args).returncode == 0 and json.loads(again.read_text())["QB-Norm DIS beta=20"] == pytest.approx(want, abs=1e-6)
    for bad, needle in ((["--querybank", "test"], "holds the evaluated split 'test'"),
                        (["--querybank", "train", "--querybank-beta", "0"], "--querybank-beta: expected positive"),
                        (["--querybank", "train", "--querybank-form", "x"], "--querybank-form: expected is, dis"),
                        (["--querybank", "train", "--folds", "5"], "--querybank: evaluates one fold")):  # fmt: skip
        assert_one_line_error(run_cli("eval", str(run), "--split", "test", *bad), needle)
    assert_one_line_error(run_cli("eval", "--sims", str(tmp_path / "s.npy"), "--querybank", "train"), "--sims")
    _check_ensemble_eval(run, tmp_path, cfg, test, bank)


def _check_ensemble_eval(run, tmp_path, cfg, test, bank) -> None:
    """`vsekit eval A B`: the mean of the members' similarities, with and without QB-Norm (both cosine models:
    their normalised embeddings side by side, scaled by 1/sqrt(2), give the same mean by hand)."""
    import vsekit
    from vsekit.data.factory import build_dataset
    from vsekit.evaluation import encode_dataset, evaluate_querybank

    other = tmp_path / "run2"
    proc = run_cli("train", "--preset", "demo_gpo", "--run-dir", str(other), "--quiet", "epochs=1", "seed=1", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert run_cli("eval", str(other), "--split", "test", "--save-sims", str(tmp_path / "s2.npy")).returncode == 0
    out = tmp_path / "ens.json"
    proc = run_cli("eval", str(run), str(other), "--split", "test", "--querybank", "train", "--save-sims",
                   str(tmp_path / "ens.npy"), "--json", str(out), "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "an ensemble of 2 models" in proc.stdout
    mean = (np.load(tmp_path / "s.npy") + np.load(tmp_path / "s2.npy")) / 2
    np.testing.assert_allclose(np.load(tmp_path / "ens.npy"), mean, atol=1e-6)
    model2 = vsekit.load(str(other))
    test2, bank2 = (encode_dataset(model2, build_dataset(cfg.data, s, evaluation=True)) for s in ("test", "train"))
    side = [np.concatenate([a.numpy(), b.numpy()], axis=1) / np.sqrt(2) for a, b in zip((*test, *bank), (*test2, *bank2))]
    want = evaluate_querybank(*side, beta=20.0)
    assert json.loads(out.read_text())["QB-Norm IS beta=20"] == pytest.approx(want, abs=1e-6)


def test_train_from_config_file_on_precomp_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("dev", 20)):
        feats = rng.normal(size=(n, 5, 16)).astype(np.float16)
        caps = [f"a photo number {i % 7} of thing {j}" for i in range(n) for j in range(5)]
        write_precomp(tmp_path / "data", split, feats, caps)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "preset: vse_infty_region_bigru\n"
        f"data:\n  path: {tmp_path / 'data'}\n  vocab_min_count: 1\n"
        "model:\n  embed_size: 32\n  image:\n    img_dim: 16\n  text:\n    word_dim: 16\n"
        "epochs: 1\nbatch_size: 20\n"
    )
    proc = run_cli("train", "--config", str(cfg), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "best.pt").is_file()


def test_missing_data_file_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nowhere"
    proc = run_cli("train", "--preset", "vse_infty_region_bigru", f"data.path={missing}", "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(proc, str(missing))


def test_malformed_data_file_is_a_one_line_error(tmp_path):
    data = tmp_path / "data"
    write_precomp(data, "train", np.zeros((4, 3, 8), np.float32), [f"caption {i}" for i in range(20)])
    (data / "train_caps.txt").write_text("only\nseven\nlines\nof\ncaptions\nhere\nnow\n")
    proc = run_cli("train", "--preset", "vse_infty_region_bigru", f"data.path={data}", "model.image.img_dim=8")
    assert_one_line_error(proc, "train_caps.txt")
    (data / "train_ims.npy").write_bytes(b"not a numpy file")
    proc = run_cli("train", "--preset", "vse_infty_region_bigru", f"data.path={data}", "model.image.img_dim=8")
    assert_one_line_error(proc, "train_ims.npy")


def test_config_mistakes_are_one_line_errors(tmp_path):
    assert_one_line_error(run_cli("train", "--preset", "nope"), "nope")
    assert_one_line_error(run_cli("train", "--preset", "demo_gpo", "optim.lrr=1"), "optim.lrr")
    assert_one_line_error(run_cli("train", "--preset", "demo_gpo", "epochs=many"), "epochs")
    assert_one_line_error(run_cli("train", "--preset", "demo_gpo", "model.image.pooling=median"), "model.image.pooling")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    assert_one_line_error(run_cli("train", "--config", str(bad)), str(bad))
    assert_one_line_error(run_cli("train", "--config", str(tmp_path / "missing.yaml")), "missing.yaml")
    assert_one_line_error(run_cli("eval", str(tmp_path / "no.pt")), "no.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    assert_one_line_error(run_cli("eval", str(junk)), "junk.pt")


def test_presets_and_config_commands():
    proc = run_cli("presets")
    assert proc.returncode == 0
    for name in ("vse_infty_region_bigru", "vsepp", "vse0", "demo_gpo"):
        assert name in proc.stdout
    proc = run_cli("config", "vse0", "epochs=3")
    assert proc.returncode == 0, proc.stderr
    assert "negatives: sum" in proc.stdout and "epochs: 3" in proc.stdout


def test_overrides_on_both_sides_of_flags(tmp_path):
    # argparse alone stops collecting KEY=VALUE items at the first flag; the CLI gathers all of them
    (tmp_path / "c.yaml").write_text("seed: 5\n")
    proc = run_cli("config", "vse0", "epochs=3", "--config", str(tmp_path / "c.yaml"), "batch_size=7", "optim.lr=0.01")
    assert proc.returncode == 0, proc.stderr
    assert "epochs: 3" in proc.stdout and "batch_size: 7" in proc.stdout and "lr: 0.01" in proc.stdout
    assert "seed: 5" in proc.stdout
    proc = run_cli("config", "vse0", "--bogus-flag")
    assert proc.returncode == 2 and "unrecognized arguments: --bogus-flag" in proc.stderr
