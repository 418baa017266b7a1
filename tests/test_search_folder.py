"""A folder of photos searched in one command (``vsekit search FOLDER --model M``, ``vsekit serve FOLDER``,
:func:`vsekit.index.folders.open_folder`), fast queries that load no model (``--item``), many queries in one
process (``--queries``), and queries sent to a running server (``--server`` / ``$VSEKIT_SERVER``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_index import trained
from vsekit.errors import CheckpointError, ConfigError, DataError
from vsekit.index import Index
from vsekit.index.folders import INDEXES, folder_is_indexed, open_folder
from vsekit.index.queries import read_query_file


def _vsekit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "vsekit", *args], capture_output=True, text=True, env=env, timeout=300, check=False)


def _photos(tmp_path: Path) -> Path:
    """A copy of the trained collection's photos (no captions file): a folder the user points at."""
    folder = tmp_path / "my photos"
    shutil.copytree(trained()["photos"], folder, ignore=shutil.ignore_patterns("*.csv"))
    return folder


def _ids(hits) -> list[str]:
    return [h.id for h in hits]


def test_open_folder_indexes_once_updates_on_change_and_matches_encode(tmp_path):
    t = trained()
    folder = _photos(tmp_path)
    idx = open_folder(folder, t["run"], progress=False)
    where = folder / INDEXES / idx.path.name
    assert idx.path == where.absolute() and (where / "index.json").is_file()
    assert idx.stats()["num_images"] == 12 and idx.stats()["num_texts"] == 0
    reference = Index.build(t["run"], folder, tmp_path / "ref", progress=False)  # the same as vsekit encode
    query = t["queries"][0][0]
    assert _ids(idx.search(text=query, k=12)) == _ids(reference.search(text=query, k=12))
    assert folder_is_indexed(folder, where, t["run"])

    # up to date: opened, not rebuilt (the generation stays) and no model read until a query needs one
    generation = json.loads((where / "index.json").read_text())["generation"]
    again = open_folder(folder, progress=False)  # the model it was indexed with, found in the folder
    assert json.loads((where / "index.json").read_text())["generation"] == generation
    assert _ids(again.search(item="shape0_colour0.png", k=3)) == _ids(idx.search(item="shape0_colour0.png", k=3))

    # a photo added and one removed: the next open embeds the new one and drops the removed one
    shutil.copy(folder / "shape0_colour0.png", folder / "more" / "copy.png")
    (folder / "more" / "shape0_colour1.png").unlink()
    assert not folder_is_indexed(folder, where, t["run"])
    updated = open_folder(folder, t["run"], progress=False)
    assert updated.stats()["num_images"] == 12 and updated.item("more/copy.png")["modality"] == "image"
    with pytest.raises(DataError, match="unknown id"):
        updated.item("more/shape0_colour1.png")
    np.testing.assert_allclose(updated.embedding("more/copy.png"), updated.embedding("shape0_colour0.png"), atol=1e-6)


def test_open_folder_errors(tmp_path):
    t = trained()
    folder = _photos(tmp_path)
    with pytest.raises(ConfigError, match="not indexed yet; give the model"):
        open_folder(folder)
    with pytest.raises(DataError, match="not a folder of photos"):
        open_folder(tmp_path / "nothing", t["run"])
    open_folder(folder, t["run"], index_dir=tmp_path / "a", progress=False)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(folder / "shape0_colour0.png", other / "x.png")
    with pytest.raises(DataError, match="holds an index of .* not of the folder"):
        open_folder(other, t["run"], index_dir=tmp_path / "a")
    open_folder(folder, t["run"], index_dir=folder / INDEXES / "second", progress=False)
    open_folder(folder, t["run"], progress=False)
    with pytest.raises(ConfigError, match="indexes for several models"):
        open_folder(folder)


def test_item_search_reads_no_checkpoint_and_text_search_does(tmp_path):
    t = trained()
    run = tmp_path / "run"
    shutil.copytree(t["run"], run)
    out = tmp_path / "idx"
    Index.build(run, t["photos"], out, progress=False)
    shutil.rmtree(run)  # the model is gone: searches by item still work, as they need none
    idx = Index.load(out, lazy=True)
    assert [h.id for h in idx.search(item="shape0_colour0.png", k=2)]
    proc = _vsekit("search", str(out), "--item", "shape0_colour0.png", "-k", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.loads(proc.stdout)) == 2
    with pytest.raises(CheckpointError, match="is not there"):
        idx.search(text="a red disc")
    with pytest.raises(CheckpointError):
        Index.load(out)  # eager: the error comes at once


def test_queries_file_answers_like_single_searches(tmp_path):
    t = trained()
    out = tmp_path / "idx"
    idx = Index.build(t["run"], t["photos"] / "captions.csv", out, progress=False)
    image = t["photos"] / "more" / "shape0_colour1.png"
    lines = ["# a comment", t["queries"][0][0], "", str(image), t["queries"][7][0], "not/an/image.png"]
    qfile = tmp_path / "queries.txt"
    qfile.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_query_file(qfile) == [("text", lines[1]), ("image", str(image)), ("text", lines[4]), ("text", lines[5])]
    proc = _vsekit("search", str(out), "--queries", str(qfile), "-k", "3", "--json", "--target", "text")
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(a["kind"], a["query"]) for a in answers] == read_query_file(qfile)
    for a in answers:
        ref = idx.search(**{a["kind"]: a["query"]}, k=3, target="text")
        assert [h["id"] for h in a["hits"]] == _ids(ref)
        np.testing.assert_allclose([h["score"] for h in a["hits"]], [h.score for h in ref], atol=1e-5)
    table = _vsekit("search", str(out), "--queries", str(qfile), "-k", "2")
    assert table.returncode == 0 and table.stdout.count("# text: ") == 3 and table.stdout.count("# image: ") == 1
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    bad = _vsekit("search", str(out), "--queries", str(tmp_path / "empty.txt"))
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {tmp_path / 'empty.txt'}: holds no query (one text or image path a line)"


def test_search_folder_by_cli_then_through_a_server(tmp_path):
    from tests.test_serve import start_server, stop_server

    t = trained()
    folder = _photos(tmp_path)
    query = t["queries"][3][0]
    first = _vsekit("search", str(folder), "--model", str(t["run"]), "--text", query, "-k", "5", "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "images/s" in first.stderr  # it indexed the folder, with progress
    again = _vsekit("search", str(folder), "--text", query, "-k", "5", "--json")
    assert again.returncode == 0 and "reused" not in again.stderr and again.stdout == first.stdout  # not rebuilt
    proc, url = start_server(folder)  # vsekit serve FOLDER: its index, with the model it was made with
    try:
        served = _vsekit("search", "--server", url, "--text", query, "-k", "5", "--json")
        assert served.returncode == 0, served.stderr[-2000:]
        local = json.loads(first.stdout)
        remote = json.loads(served.stdout)
        assert [h["id"] for h in remote] == [h["id"] for h in local]
        np.testing.assert_allclose([h["score"] for h in remote], [h["score"] for h in local], atol=1e-5)
        by_env = _vsekit("search", "--item", local[0]["id"], "-k", "2", "--json", env={"VSEKIT_SERVER": url})
        assert by_env.returncode == 0 and len(json.loads(by_env.stdout)) == 2
    finally:
        stop_server(proc)
    down = _vsekit("search", "--server", url, "--text", query)
    assert down.returncode == 2 and down.stderr.startswith("error: cannot reach the service at")
    both = _vsekit("search", str(folder), "--server", url, "--text", query)
    assert both.returncode == 2 and "are two indexes; give one" in both.stderr
    nothing = _vsekit("search", "--text", query, env={"VSEKIT_SERVER": ""})
    assert nothing.returncode == 2 and "give an index or photo folder, or --server URL" in nothing.stderr
    index = folder / INDEXES / next((folder / INDEXES).iterdir()).name
    wrong = _vsekit("search", str(index), "--model", str(t["run"]), "--text", query)
    assert wrong.returncode == 2 and "is an index (it has its model)" in wrong.stderr


def test_commands_that_need_no_model_import_no_torch():
    """``import vsekit`` imports its public names on first use: the command line, the HTTP client and its hits
    start without torch (what keeps ``vsekit search --server`` and ``--help`` instant), and the names still work."""
    code = (
        "import sys, vsekit, vsekit.cli, vsekit.index\n"
        "from vsekit.serving import SearchClient\n"
        "from vsekit.index.hits import Hit\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert callable(vsekit.load) and vsekit.index.Index.load and 'load' in dir(vsekit)\n"
        "assert vsekit.data.make_synthetic is vsekit.make_synthetic\n"
        "try:\n    vsekit.nothing\nexcept AttributeError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "module 'vsekit' has no attribute 'nothing'"
