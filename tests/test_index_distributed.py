"""``torchrun -m vsekit encode``: two gloo processes build the same index as one process, and a two-process build
killed midway resumes to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow
pytest.importorskip("pyarrow", reason="search indexes need pyarrow")

N_IMAGES = 1500


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict[str, Path]:
    """A folder of photos with a CSV of captions (both modalities), and an untrained pixel model's checkpoint."""
    from tests.conftest import tiny_config
    from vsekit.checkpoint import save_checkpoint
    from vsekit.data import build_vocab
    from vsekit.models import create_model

    root = tmp_path_factory.mktemp("dist_encode")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,caption"]
    for i in range(N_IMAGES):
        Image.fromarray((rng.random((40 + i % 5, 48, 3)) * 255).astype(np.uint8)).save(photos / f"im{i:04d}.png")
        rows.append(f"im{i:04d}.png,a picture number {i % 37} of things")
    (photos / "captions.csv").write_text("\n".join(rows) + "\n")
    cfg = tiny_config("model.image.backbone=tiny", "model.image.image_size=64", preset="vse_infty_grid_bigru")
    torch.manual_seed(0)
    vocab = build_vocab([f"a picture number {i} of things" for i in range(37)], min_count=1)
    save_checkpoint(root / "m.pt", create_model(cfg.model, vocab), cfg)
    return {"root": root, "source": photos / "captions.csv", "checkpoint": root / "m.pt"}


@pytest.fixture(scope="module")
def env(collection) -> dict[str, str]:
    """The processes' environment: one thread each, and torchrun's temporary folders (which a SIGKILL leaves
    behind) inside the test's own folder."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(collection["root"])}


def encode_cmd(c: dict[str, Path], out: Path, processes: int) -> list[str]:
    args = ["encode", str(c["checkpoint"]), str(c["source"]), "--out", str(out), "--batch-size", "16",
            "--save-every-seconds", "0", "--workers", "1", "--quiet"]  # fmt: skip
    if processes == 1:
        return [sys.executable, "-m", "vsekit", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m", "vsekit", *args]


def run(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def assert_same_index(a: Path, b: Path) -> None:
    from vsekit.index import Index

    x, y = Index.load(a), Index.load(b)
    assert x.stats()["num_images"] == y.stats()["num_images"] == N_IMAGES
    assert x.stats()["num_texts"] == y.stats()["num_texts"] == N_IMAGES
    for m in ("image", "text"):  # ids, in order, and their embeddings
        ids = [h.id for h in x.search(text="a picture number 3 of things", k=2 * N_IMAGES, target=m)]
        assert ids == [h.id for h in y.search(text="a picture number 3 of things", k=2 * N_IMAGES, target=m)]
        for item in ids[:: max(1, len(ids) // 200)]:
            np.testing.assert_allclose(x.embedding(item), y.embedding(item), rtol=1e-5, atol=1e-6)
    one, two = (json.loads((p / "index.json").read_text()) for p in (a, b))
    assert one["counts"] == two["counts"] and one["skipped"] == two["skipped"]
    assert {m: e["count"] for m, e in one["parts"].items()} == {m: e["count"] for m, e in two["parts"].items()}


def kill_every_process_naming(text: str) -> list[int]:
    """SIGKILL every process whose command line holds ``text``: torchrun starts its workers in sessions of their
    own, so killing torchrun's process group would leave them running (they went on to commit the index)."""
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
            except ProcessLookupError:
                pass
    return killed


def test_two_processes_build_the_single_process_index(collection, env, tmp_path):
    run(encode_cmd(collection, tmp_path / "one", 1), env)
    stdout = run(encode_cmd(collection, tmp_path / "two", 2), env)
    assert stdout.count("indexed in") == 1  # one summary line for the whole build, from rank 0
    meta = json.loads((tmp_path / "two" / "index.json").read_text())
    assert meta["timing"]["processes"] == 2 and meta["encoded"] == {"images": N_IMAGES, "texts": N_IMAGES}
    assert_same_index(tmp_path / "one", tmp_path / "two")


def test_a_killed_two_process_build_resumes(collection, env, tmp_path):
    run(encode_cmd(collection, tmp_path / "one", 1), env)
    out = tmp_path / "two"
    proc = subprocess.Popen(encode_cmd(collection, out, 2), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((out / "pending").glob("*.npz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = kill_every_process_naming(str(out))  # torchrun and both workers, no chance to clean up
    proc.wait()
    assert len(killed) >= 3, killed
    kept = len(list((out / "pending").glob("*.npz")))
    assert kept > 0 and not (out / "index.json").exists()
    run(encode_cmd(collection, out, 2), env)
    meta = json.loads((out / "index.json").read_text())
    assert 0 < meta["encoded"]["images"] + meta["encoded"]["texts"] < 2 * N_IMAGES  # what was kept is reused
    assert_same_index(tmp_path / "one", out)
