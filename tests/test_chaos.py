"""Chaos: ``vsekit train``, ``extract`` and ``encode`` killed (SIGKILL, no chance to clean up) at seeded random
moments, several times in a row, then run to the end; what they leave must equal an uninterrupted run's.

Each program first runs uninterrupted once, which gives the reference result, its wall time T and the moment S it
first left partial work behind (its first checkpoint, progress file or pending shard). Then the same command starts
over in a fresh folder and is killed, again and again, after delays drawn from ``random.Random(seed)`` within the
work window (S, T), and finally runs to completion. The first kill's delay counts from the moment this run leaves
its own first partial work (a run faster than the reference, on a machine less loaded than when the reference
ran, would otherwise finish before a kill drawn from its start); the later ones count from the start, so that
kills also land before any checkpoint. Kills land during work and writes alike; the test also checks that some of
them left partial work behind, so that resuming (not only restarting) is what it exercises. Set
``VSEKIT_CHAOS_SEED`` to draw other moments.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("VSEKIT_CHAOS_SEED", "0"))
KILLS = 5
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}  # one thread: the same float sums every run


def vsekit(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "vsekit", *map(str, args), "--quiet"]


def run_to_end(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return time.perf_counter() - start


def run_watching(cmd: list[str], ready: callable) -> tuple[float, float]:
    """Run ``cmd`` to the end; its wall time and the moment ``ready()`` first held (polled every 20 ms)."""
    start, first = time.perf_counter(), None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    while proc.poll() is None:
        if first is None and ready():
            first = time.perf_counter() - start
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    seconds = time.perf_counter() - start
    return seconds, seconds if first is None else first


def kill_after(cmd: list[str], delay: float, began: callable | None = None) -> bool:
    """Start ``cmd``, SIGKILL it ``delay`` seconds after its start or, with ``began``, after ``began()`` first
    holds (polled every 10 ms); True when it was still running then."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        while began is not None and proc.poll() is None and not began():
            time.sleep(0.01)
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    return False


def chaos(cmd: list[str], reference_seconds: float, start: float, began: callable, partial: callable,
          rng: random.Random) -> list[dict]:  # fmt: skip
    """Kill ``cmd`` up to KILLS times at random moments, then run it to the end. Returns what each kill met.

    The first kill comes 5-40% of the uninterrupted run's work window (S, T) after ``began()`` (this run's first
    partial work) holds; a kill in the window's last part may meet only the final evaluation and drawing. Each
    later one comes after S plus 10-60% of a window 0.6 times as long per kill, since each rerun has less left to
    do. Once a run finishes before its kill, the rest are moot."""
    kills = []
    window = max(reference_seconds - start, 0.5)
    for i in range(KILLS):
        if i == 0:
            delay, anchor = rng.uniform(0.05, 0.4) * window, began
        else:
            delay, anchor = start + rng.uniform(0.1, 0.6) * window * 0.6**i, None
        killed = kill_after(cmd, delay, anchor)
        kills.append({"delay": round(delay, 2), "killed": killed, "partial": killed and partial()})
        if not killed:
            break
    run_to_end(cmd)
    print(f"{cmd[3]}: uninterrupted {reference_seconds:.1f} s, first partial work at {start:.1f} s; kills {kills}")
    return kills


def test_killed_training_resumes_to_the_uninterrupted_weights(tmp_path):
    overrides = [*TINY, "epochs=2", "checkpoint_every=2", "data.synthetic.num_train=300"]
    ref = tmp_path / "ref"
    seconds, first_checkpoint = run_watching(vsekit("train", "--preset", "demo_gpo", "--run-dir", ref, *overrides),
                                             lambda: (ref / "last.pt").is_file())  # fmt: skip
    run = tmp_path / "chaos"
    cmd = vsekit("train", "--preset", "demo_gpo", "--run-dir", run, *overrides)

    def partial() -> bool:  # a checkpoint to resume from, and epochs still to run
        history = run / "metrics.jsonl"
        epochs = len(history.read_text().splitlines()) if history.is_file() else 0
        return (run / "last.pt").is_file() and epochs < 2

    kills = chaos(cmd, seconds, first_checkpoint, lambda: (run / "last.pt").is_file(), partial, random.Random(SEED))
    assert any(k["partial"] for k in kills), kills
    a = torch.load(ref / "last.pt", weights_only=True)
    b = torch.load(run / "last.pt", weights_only=True)
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), (key, kills)
    assert not list(run.glob("*.tmp")), "a temporary left beside the run"


def photos(root: Path, n: int) -> list[dict]:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        img = (rng.random((48 + i % 7, 56, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"im{i:03d}.png")
        records.append({"filename": f"im{i:03d}.png", "split": "train", "imgid": i,
                        "sentences": [{"raw": f"picture {i} caption {c}"} for c in range(2)]})  # fmt: skip
    return records


def test_killed_extraction_resumes_to_the_uninterrupted_features(tmp_path):
    ann = tmp_path / "dataset.json"
    ann.write_text(json.dumps({"images": photos(tmp_path / "images", 2000)}))
    args = ("--splits", "train", "--backbone", "tiny", "--image-size", "192", "--batch-size", "4", "--dtype", "float32",
            "--save-every-seconds", "0")  # fmt: skip
    ref = tmp_path / "ref"
    seconds, first_save = run_watching(vsekit("extract", ann, tmp_path / "images", ref, *args),
                                       lambda: (ref / "train.progress.json").is_file())  # fmt: skip
    out = tmp_path / "chaos"
    cmd = vsekit("extract", ann, tmp_path / "images", out, *args)
    saved = lambda: (out / "train.progress.json").is_file()  # noqa: E731
    kills = chaos(cmd, seconds, first_save, saved, saved, random.Random(SEED + 1))
    assert any(k["partial"] for k in kills), kills
    # batches of 4 split the same way in every run, so a resumed extraction gives the same numbers
    np.testing.assert_array_equal(np.load(out / "train_ims.npy"), np.load(tmp_path / "ref" / "train_ims.npy"))
    assert not list(out.glob("*.partial")) and not list(out.glob("*.tmp"))


def test_killed_encoding_resumes_to_the_uninterrupted_index(tmp_path):
    from tests.conftest import tiny_config
    from vsekit.checkpoint import save_checkpoint
    from vsekit.data import build_vocab
    from vsekit.index import Index
    from vsekit.models import create_model

    photos(tmp_path / "photos", 3000)
    cfg = tiny_config("model.image.backbone=tiny", "model.image.image_size=160", preset="vse_infty_grid_bigru")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", create_model(cfg.model, build_vocab(["a picture"], min_count=1)), cfg)
    args = ("--batch-size", "8", "--save-every-seconds", "0", "--workers", "1")
    seconds, first_shard = run_watching(vsekit("encode", tmp_path / "m.pt", tmp_path / "photos", "--out", tmp_path / "ref", *args),
                                        lambda: (tmp_path / "ref" / "pending").is_dir())  # fmt: skip
    out = tmp_path / "chaos"
    cmd = vsekit("encode", tmp_path / "m.pt", tmp_path / "photos", "--out", out, *args)
    kept = lambda: (out / "pending").is_dir()  # noqa: E731
    kills = chaos(cmd, seconds, first_shard, kept, kept, random.Random(SEED + 2))
    assert any(k["partial"] for k in kills), kills
    ref, got = Index.load(tmp_path / "ref"), Index.load(out)
    assert got.stats()["num_images"] == ref.stats()["num_images"] == 3000
    for i in range(3000):
        np.testing.assert_allclose(got.embedding(f"im{i:03d}.png"), ref.embedding(f"im{i:03d}.png"), rtol=1e-5, atol=1e-6)
    a, b = ref.search(text="a picture", k=50), got.search(text="a picture", k=50)
    assert [h.id for h in a] == [h.id for h in b]
    assert not (out / "pending").exists()
