"""The files of an index: their layout, ``index.json``, the parts (shards, metadata, FAISS index) of each
generation, and the atomic commit.

On disk (``out_dir``)::

    index.json                         format, model reference (checkpoint path + sha256 + config summary),
                                       collection root and kind, backend, dim, counts, recall@10 of an
                                       approximate backend, skipped files, build time and throughput
    images/g000003/emb-00000.npy       float32 N_s×E embedding shards (at most ``shard_size`` rows each)
    images/g000003/metadata.parquet    one row per embedding row: id, path, caption, image_id, size, mtime, key
    images/g000003/faiss.index         the FAISS index (FAISS backends only)
    texts/g000003/...                  the same for the texts
    pending/                           embeddings of an unfinished build (reused by the next one)

Embeddings are stored as float32 (4 bytes × E per item: 4 KiB at E = 1024): the exact backend searches
the memory-mapped shards without a conversion, and scores equal the model's own. Metadata is Parquet
(``pyarrow``, ``pip install 'vsekit[search]'``): columnar, compressed, readable by any data tool.

Consistency: every build writes a new *generation* folder per changed modality, then replaces
``index.json`` atomically (the commit), then deletes the folders no longer referenced. A killed build
therefore leaves the previous index readable, and the embeddings it computed (flushed to ``pending/``
every ``checkpoint_every`` items) are reused by the next build. Building again on the same ``out_dir``
embeds only items whose key is new (see :mod:`vsekit.index.collection`) and drops removed ones; a
different checkpoint (another sha256) re-embeds everything. One build writes a folder at a time: it holds the folder
(:func:`vsekit.io.exclusive_folder`) from opening it to the commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vsekit.errors import CheckpointError, ConfigError, DataError, first_line
from vsekit.index.backends import ExactBackend, FaissBackend, parse_backend
from vsekit.index.budget import AUTO, AutoSettings, auto_settings, build_auto
from vsekit.index.rows import RerankedBackend, ShardRows
from vsekit.io import LOCK_FILE, atomic_write, atomic_write_json, exclusive_folder
from vsekit.pretrained import find_model_folder

__all__ = [
    "COLUMNS", "FORMAT", "MODALITIES", "PENDING", "VERSION", "IndexPart", "commit_index", "index_checkpoint",
    "open_out_dir", "open_part", "open_shards", "read_index_json", "require_pyarrow", "sha256_file", "write_part",
]  # fmt: skip

FORMAT = "vsekit-index"
VERSION = 1
MODALITIES = ("image", "text")
FOLDERS = {"image": "images", "text": "texts"}
"""The folder of each modality's generations."""
GENERATION = re.compile(r"^g\d{6}$")
"""The name of a generation folder."""
PENDING = "pending"
"""The folder of the embeddings of an unfinished build."""
COLUMNS = ("id", "path", "caption", "image_id", "size", "mtime", "key")
"""The metadata columns, one row per embedding row."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_pyarrow() -> Any:
    """The ``pyarrow`` module (with ``pyarrow.parquet``), or a :class:`ConfigError` saying how to install it."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ConfigError("search indexes store their metadata as Parquet: pip install 'vsekit[search]' (pyarrow)") from None
    return pyarrow


@dataclass
class IndexPart:
    """The rows of one modality: metadata columns, embedding shards and the search backend."""

    modality: str
    columns: dict[str, list[Any]]
    shards: list[np.ndarray]
    exact: ExactBackend
    backend: ExactBackend | FaissBackend | RerankedBackend
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.columns["id"])


def _read_metadata(path: Path) -> dict[str, list[Any]]:
    pa = require_pyarrow()
    try:
        table = pa.parquet.read_table(path)
    except FileNotFoundError:
        raise DataError(f"index metadata not found: {path}") from None
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: metadata lacks the columns {missing}")
    return {c: table.column(c).to_pylist() for c in COLUMNS}


def _write_metadata(path: Path, columns: dict[str, list[Any]]) -> None:
    pa = require_pyarrow()
    types = {"id": pa.string(), "path": pa.string(), "caption": pa.string(), "image_id": pa.string(),
             "size": pa.int64(), "mtime": pa.int64(), "key": pa.string()}  # fmt: skip
    table = pa.table({c: pa.array(columns[c], type=types[c]) for c in COLUMNS})
    atomic_write(path, lambda f: pa.parquet.write_table(table, f, compression="zstd"))


def open_shards(folder: Path, entry: dict[str, Any], dim: int) -> list[np.ndarray]:
    shards = []
    for name in entry.get("shards", []):
        p = folder / name
        try:
            arr = np.load(p, mmap_mode="c", allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"index embedding shard not found: {p}") from None
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{p}: not a readable .npy array ({e})") from None
        if arr.ndim != 2 or arr.shape[1] != dim or arr.dtype != np.float32:
            raise DataError(f"{p}: expected float32 N×{dim} embeddings, got {arr.dtype} {arr.shape}")
        shards.append(arr)
    return shards


def open_part(folder: Path, meta: dict[str, Any], modality: str, faiss: bool = True) -> IndexPart:
    entry = meta["parts"][modality]
    dim = int(meta["dim"])
    if entry.get("count", 0) == 0:
        columns: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        shards: list[np.ndarray] = []
    else:
        columns = _read_metadata(folder / entry["metadata"])
        shards = open_shards(folder, entry, dim)
    n = sum(len(s) for s in shards)
    if n != len(columns["id"]) or n != entry.get("count", 0):
        raise DataError(
            f"{folder / 'index.json'}: the {modality} part lists {entry.get('count')} items, its shards hold {n} rows "
            f"and its metadata {len(columns['id'])}; rebuild the index"
        )
    exact = ExactBackend(shards, dim)
    backend: ExactBackend | FaissBackend | RerankedBackend = exact
    if faiss and entry.get("faiss"):
        factory = entry.get("factory") or parse_backend(meta["backend"])[1] or ""  # faiss:auto records its choice
        backend = FaissBackend.load(folder / entry["faiss"], factory, entry.get("search_params") or "")
        if backend.ntotal != n:
            raise DataError(f"{folder / entry['faiss']}: the FAISS index holds {backend.ntotal} vectors, expected {n}")
        if entry.get("rerank"):
            backend = RerankedBackend(backend, ShardRows(shards, dim), int(entry["rerank"]))
    rows = {i: r for r, i in enumerate(columns["id"])}
    return IndexPart(modality, columns, shards, exact, backend, rows)


def read_index_json(folder: Path) -> dict[str, Any]:
    path = folder / "index.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder}: not a vsekit index (no index.json; build one with 'vsekit encode')") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a vsekit index (missing format={FORMAT!r})")
    if meta.get("version") != VERSION:
        raise DataError(f"{path}: index version {meta.get('version')!r} is not supported (expected {VERSION})")
    for key in ("model", "collection", "dim", "backend", "parts"):
        if key not in meta:
            raise DataError(f"{path}: index.json lacks the {key!r} entry")
    if not isinstance(meta["parts"], dict) or set(meta["parts"]) != set(MODALITIES):
        raise DataError(f"{path}: 'parts' must hold 'image' and 'text'")
    return meta


def index_checkpoint(folder: Path, meta: dict[str, Any], checkpoint: str | os.PathLike | None = None) -> Path:
    """The checkpoint of an index: ``checkpoint`` (a file, a run folder, a model folder or a ready model's name) if
    given, else the one its index.json names, checked to be what the index was built with (same SHA-256 of the
    checkpoint file, or of a model folder's weights).

    Raises:
        CheckpointError: if the checkpoint is missing or is another file.
    """
    given = checkpoint if checkpoint is not None else meta["model"]["checkpoint"]
    ckpt = weights = Path(given)
    if ckpt.is_dir() or find_model_folder(given) is not None:  # a run folder, a model folder or a ready model's name
        from vsekit.checkpoint import read_checkpoint

        found = read_checkpoint(given)
        ckpt, weights = Path(found["path"]), Path(found.get("weights_path", found["path"]))
    if not weights.is_file():
        raise CheckpointError(
            f"{ckpt}: the checkpoint of index {folder} is not there (pass checkpoint= / --checkpoint with its new place)"
        )
    sha = sha256_file(weights)
    if sha != meta["model"]["sha256"]:
        raise CheckpointError(
            f"{ckpt}: not the checkpoint index {folder} was built with (sha256 {sha[:12]}… != "
            f"{meta['model']['sha256'][:12]}…); re-run 'vsekit encode' with this checkpoint"
        )
    return ckpt


def _check_out_dir(out: Path) -> dict[str, Any] | None:
    """The current index.json of ``out`` (None for a new index). Refuses a folder that holds other things."""
    if out.exists() and not out.is_dir():
        raise DataError(f"out_dir: {out} exists and is not a folder")
    if (out / "index.json").exists():
        return read_index_json(out)
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in (PENDING, LOCK_FILE, *FOLDERS.values()))
        if others:
            raise DataError(f"out_dir: {out} is not empty and not a vsekit index (it holds {others[0]!r}); choose a new folder")
    return None


def _clean_generations(out: Path, keep: set[str]) -> None:
    """Delete the generation folders of ``out`` that ``keep`` (relative paths) does not list."""
    for modality in MODALITIES:
        base = out / FOLDERS[modality]
        if not base.is_dir():
            continue
        for p in base.iterdir():
            rel = f"{FOLDERS[modality]}/{p.name}"
            if p.is_dir() and GENERATION.match(p.name) and rel not in keep:
                shutil.rmtree(p, ignore_errors=True)


def open_out_dir(out: Path, held: contextlib.ExitStack) -> dict[str, Any] | None:
    """The current index.json of ``out`` (None for a new index), with ``out`` created, held for this build until
    ``held`` closes (:func:`vsekit.io.exclusive_folder`: a second build into the same folder stops with
    :class:`~vsekit.errors.FolderInUseError` instead of deleting this one's new generation and mixing its shards
    in), and the generation folders of a build killed before its commit deleted. Refuses a folder that holds
    other things."""
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    held.enter_context(exclusive_folder(out, "out_dir"))
    old = _check_out_dir(out)  # again: what the build that held the folder until now committed
    _clean_generations(out, _referenced(old))
    return old


def commit_index(out: Path, meta: dict[str, Any]) -> None:
    """Replace ``index.json`` atomically (the commit), then delete what it no longer references: the older
    generation folders and ``pending/``."""
    atomic_write_json(meta, out / "index.json")
    _clean_generations(out, _referenced(meta))
    shutil.rmtree(out / PENDING, ignore_errors=True)


def _referenced(meta: dict[str, Any] | None) -> set[str]:
    if not meta:
        return set()
    return {e["folder"] for e in meta["parts"].values() if e.get("folder")}


def write_part(
    out: Path,
    modality: str,
    generation: int,
    cols: dict[str, list[Any]],
    sources: dict[str, tuple[int, int]],
    arrays: list[Any],
    dim: int,
    shard_size: int,
    factory: str | None,
    search_params: str | None,
    auto: AutoSettings | None = None,
) -> dict[str, Any]:
    """Write one modality's shards, metadata and FAISS index into a new generation folder (``factory="auto"``:
    the index :func:`vsekit.index.budget.build_auto` chooses under ``auto``). ``sources[key]`` is the array of
    ``arrays`` (memory-mapped shards, :class:`~vsekit.index.pending.StoredRows`) and the row holding its
    embedding; each shard reads only the arrays it takes rows from."""
    n = len(cols["id"])
    if n == 0:
        return {"count": 0, "folder": None, "shards": [], "metadata": None, "faiss": None, "recall": None}
    rel = f"{FOLDERS[modality]}/g{generation:06d}"
    folder = out / rel
    folder.mkdir(parents=True, exist_ok=True)
    src = np.array([sources[k][0] for k in cols["key"]], dtype=np.int64)
    row = np.array([sources[k][1] for k in cols["key"]], dtype=np.int64)
    names = []
    for s, a in enumerate(range(0, n, shard_size)):
        b = min(n, a + shard_size)
        block = np.empty((b - a, dim), dtype=np.float32)
        for u in np.unique(src[a:b]):
            m = src[a:b] == u
            block[m] = arrays[u][row[a:b][m]]
        name = f"{rel}/emb-{s:05d}.npy"
        atomic_write(out / name, lambda f, block=block: np.save(f, block, allow_pickle=False))
        names.append(name)
    _write_metadata(folder / "metadata.parquet", cols)
    entry: dict[str, Any] = {"count": n, "folder": rel, "shards": names, "metadata": f"{rel}/metadata.parquet",
                             "faiss": None, "recall": None}  # fmt: skip
    if factory == AUTO:
        settings = auto if auto is not None else auto_settings(None, None, 1000)
        entry.update(build_auto(open_shards(out, entry, dim), dim, settings, folder / "faiss.index", FOLDERS[modality]))
        entry["faiss"] = f"{rel}/faiss.index"
    elif factory is not None:
        shards = open_shards(out, entry, dim)
        fb = FaissBackend.build(shards, factory, search_params)
        fb.save(folder / "faiss.index")
        entry["faiss"] = f"{rel}/faiss.index"
        entry["search_params"] = fb.search_params
    return entry
