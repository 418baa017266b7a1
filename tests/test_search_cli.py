"""``vsekit encode`` and ``vsekit search``: the CLI over vsekit.index, end to end in subprocesses, and its
one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_index import trained
from vsekit.cli import main
from vsekit.index import Index


def _vsekit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vsekit", *args], capture_output=True, text=True, env=env, timeout=300, check=False)


def test_encode_then_search_by_cli_matches_python(tmp_path):
    t = trained()
    out = tmp_path / "idx"
    proc = _vsekit("encode", str(t["run"]), str(t["photos"] / "captions.csv"), "--out", str(out), "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"12 images and {t['num_texts']} texts indexed in {out}/" in proc.stdout
    assert "images/s" in proc.stderr and "texts/s" in proc.stderr and "ETA" in proc.stderr  # progress + throughput

    idx = Index.load(out)
    # text -> image, as JSON: the same hits as the Python API, and a query whose image comes first (the
    # model ranks the described image first for about 40% of the captions; stop at the first such one)
    right = 0
    for caption, rel in t["queries"][::5][:4]:
        proc = _vsekit("search", str(out), "--text", caption, "-k", "4", "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        hits = json.loads(proc.stdout)
        ref = [h.to_dict() for h in idx.search(text=caption, k=4)]
        assert [h["id"] for h in hits] == [h["id"] for h in ref]
        np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in ref], atol=1e-5)
        assert [h["rank"] for h in hits] == [1, 2, 3, 4] and {h["modality"] for h in hits} == {"image"}
        right += hits[0]["path"] == rel
        if right:
            break
    assert right == 1

    # image -> text as a table, with pagination
    rel = "shape1_colour0.png"
    proc = _vsekit("search", str(out), "--image", str(t["photos"] / rel), "--target", "text", "-k", "3", "--offset", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "id", "caption"] and len(lines) == 4
    ref = idx.search(image=t["photos"] / rel, target="text", k=3, offset=2)
    for line, hit in zip(lines[1:], ref):
        rank, score, hid = line.split()[:3]
        assert (int(rank), hid) == (hit.rank, hit.id) and float(score) == pytest.approx(hit.score, abs=1e-4)
        assert line.rstrip().endswith(hit.caption)

    # a user mistake: exit status 2 and one line, no traceback
    proc = _vsekit("search", str(out), "--item", "../../etc/passwd")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: item: unknown id")


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    t = trained()
    out = tmp_path / "idx"
    assert main(["encode", str(t["run"]), str(t["photos"]), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    cases = [
        (["search", str(out), "--text", "a red disc", "-k", "0"], "error: k: expected an integer >= 1"),
        (["search", str(out), "--text", "a red disc", "--offset", "-3"], "error: offset: expected an integer >= 0"),
        (["search", str(out), "--text", "  "], "error: text: expected a non-empty query"),
        (["search", str(out), "--text", "a disc", "--target", "text"], "error: target: index"),
        (["search", str(out), "--image", str(tmp_path / "none.jpg")], "error: image file not found"),
        (["search", str(tmp_path), "--text", "a disc"], "error: model: " + str(tmp_path) + " is not indexed yet"),
        (["encode", str(t["run"]), str(tmp_path / "nothing"), "--out", str(tmp_path / "x")], "error: source not found"),
        (["encode", str(t["run"]), str(t["photos"]), "--out", str(tmp_path / "x"), "--backend", "hnsw"], "error: backend:"),
        (["encode", str(tmp_path), str(t["photos"]), "--out", str(tmp_path / "x")], "error: " + str(tmp_path) + ": folder holds no"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, (argv, err)
    with pytest.raises(SystemExit) as e:  # argparse: exactly one query
        main(["search", str(out), "--text", "a", "--item", "b"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
