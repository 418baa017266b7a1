"""One writer per output folder: a second training, index build or extraction into a folder that another process
is writing stops with a one-line error before it touches anything, and a killed writer frees the folder at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_config
from vsekit.errors import DataError, FolderInUseError
from vsekit.io import LOCK_FILE, ORPHAN_WAIT, exclusive_folder

HOLD = """
import os, sys, time
from vsekit.io import exclusive_folder
with exclusive_folder(sys.argv[1], "out"):
    if float(sys.argv[2]) and os.fork() == 0:  # a forked worker (as a DataLoader's) shares the lock, outlives us
        time.sleep(float(sys.argv[2]))
        os._exit(0)
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder():
    """Start a process that holds a folder (as a running training or build would), optionally with a forked worker
    that lives ``worker_seconds``; both are killed at the end."""
    procs = []

    def hold(folder: Path, worker_seconds: float = 0) -> subprocess.Popen:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(worker_seconds)], stdout=subprocess.PIPE,
                                text=True)  # fmt: skip
        procs.append((proc, folder))
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc, folder in procs:
        proc.kill()
        proc.wait()
        subprocess.run(["pkill", "-f", str(folder)], check=False)  # a worker that outlived its holder


def test_a_held_folder_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path, holder):
    proc = holder(tmp_path / "out")
    with pytest.raises(FolderInUseError, match=rf"^out_dir: .*out is being written by pid {proc.pid} \(") as e:
        with exclusive_folder(tmp_path / "out", "out_dir"):
            pytest.fail("entered a folder another process holds")
    assert "\n" not in str(e.value)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: the kernel drops the lock with the process
    proc.wait()
    with exclusive_folder(tmp_path / "out", "out_dir") as folder:
        assert folder == tmp_path / "out"
        assert (folder / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
    with exclusive_folder(tmp_path / "out", "out_dir"):  # released at the end of the block, file kept
        pass
    assert (tmp_path / "out" / LOCK_FILE).is_file()


def test_a_folder_that_cannot_take_the_lock_file_is_a_one_line_error(tmp_path):
    (tmp_path / LOCK_FILE).mkdir()  # what a read-only folder gives a user who is not root: open() fails
    with pytest.raises(DataError, match=rf"^out: cannot write in {tmp_path} \(Is a directory: \.vsekit\.lock\)$"):
        with exclusive_folder(tmp_path, "out"):
            pass


@pytest.mark.parametrize("worker_seconds, freed", [(1.5, True), (30, False)])
def test_a_killed_holder_whose_forked_workers_still_hold_the_lock_is_waited_for(tmp_path, holder, worker_seconds, freed):
    """kill -9 of a training leaves its DataLoader workers alive for a few seconds, holding the lock with the same
    open file: a restart waits for them (the recorded holder is dead) instead of failing; a lock that outlasts
    ORPHAN_WAIT is still refused."""
    proc = holder(tmp_path, worker_seconds)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    start = time.monotonic()
    if freed:
        with exclusive_folder(tmp_path, "run_dir"):
            assert 0.5 < time.monotonic() - start < ORPHAN_WAIT
    else:
        with pytest.raises(FolderInUseError, match=f"being written by pid {proc.pid} "):
            with exclusive_folder(tmp_path, "run_dir"):
                pass
        assert time.monotonic() - start >= ORPHAN_WAIT


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    """flock locks belong to the open file, so a nested hold in the same process is refused too."""
    with exclusive_folder(tmp_path, "run_dir"):
        with pytest.raises(FolderInUseError, match=rf"run_dir: .* pid {os.getpid()} "):
            with exclusive_folder(tmp_path, "run_dir"):
                pass


def test_training_into_a_held_run_folder_stops_before_writing(tmp_path, holder):
    from vsekit.training import train

    holder(tmp_path / "run")
    with pytest.raises(FolderInUseError, match="run_dir: .*run is being written by pid"):
        train(tiny_config("epochs=1"), tmp_path / "run", progress_stream=None)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_FILE]


def test_encode_into_a_held_index_is_a_one_line_cli_error_and_leaves_it_alone(tmp_path, holder):
    """A second ``vsekit encode`` into an index being built: exit 2 with one line, the folder untouched; once the
    first is gone the same command builds."""
    import numpy as np

    from vsekit.checkpoint import save_checkpoint
    from vsekit.data import build_vocab, write_precomp
    from vsekit.models import create_model

    cfg = tiny_config()
    feats = np.random.default_rng(0).standard_normal((4, 3, cfg.model.image.img_dim)).astype(np.float32)
    captions = [f"a {w} thing" for w in ["red", "blue", "green", "grey"] * 2]
    write_precomp(tmp_path / "feats", "test", feats, captions)
    save_checkpoint(tmp_path / "m.pt", create_model(cfg.model, build_vocab(captions, min_count=1)), cfg)
    out = tmp_path / "index"
    (out / "pending").mkdir(parents=True)
    (out / "pending" / "partial.npy").write_bytes(b"the other build's work")
    proc = holder(out)
    cmd = [sys.executable, "-m", "vsekit", "encode", str(tmp_path / "m.pt"), str(tmp_path / "feats"), "--out", str(out),
           "--quiet"]  # fmt: skip
    busy = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert busy.returncode == 2, busy.stderr[-2000:]
    assert busy.stderr.startswith(f"error: out_dir: {out} is being written by pid {proc.pid} ("), busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "pending"]
    assert (out / "pending" / "partial.npy").read_bytes() == b"the other build's work"
    proc.kill()
    proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "index.json").read_text())["counts"] == {"images": 4, "texts": 8}


def test_extraction_into_a_held_feature_folder_is_refused(tmp_path, holder):
    from PIL import Image
    from vsekit.extract import extract_features

    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "a.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"filename": "a.png", "split": "train", "sentences": [{"raw": "a", "tokens": ["a"]}]}]}))
    holder(tmp_path / "feats")
    with pytest.raises(FolderInUseError, match="out: .*feats is being written by pid"):
        extract_features(ann, tmp_path / "images", tmp_path / "feats", splits=["train"], backbone="tiny", image_size=32,
                         progress_stream=None)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "feats").iterdir()) == [LOCK_FILE]
