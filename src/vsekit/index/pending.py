"""The embeddings of an unfinished build, kept in ``pending/`` so that a killed build loses little.

Every ``every`` new embeddings of a modality are written to ``pending/{modality}-{time}-{random}.npz``
(the item keys as UTF-8 JSON and the float32 embeddings), next to a ``manifest.json`` naming the model
(checkpoint sha256) and dimension they were made with. The next build with the same model reads them back
and embeds only what they lack; a build with another model starts the folder again. A committed build
deletes the folder (:func:`vsekit.index.store.commit_index`).

The embeddings stay on disk: a build holds each file's keys and where its rows start (:class:`StoredRows`), and
reads the rows when it writes the index's shards, so that encoding a million items needs no memory for them.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np

from vsekit.index.store import MODALITIES
from vsekit.io import atomic_write, atomic_write_json

__all__ = ["PendingEmbeddings", "StoredRows"]

ZIP_LOCAL_HEADER = 30
"""Bytes of a zip member's local header before its name and extra field (their lengths at bytes 26-29)."""


class StoredRows:
    """The float32 embeddings (``rows`` × ``dim``) that start at byte ``offset`` of ``path``, read when asked for.

    Indexing reads the whole array from disk and indexes it: a ``pending/`` file holds a few thousand rows.
    """

    def __init__(self, path: Path, offset: int, rows: int, dim: int) -> None:
        self.path, self.offset, self.shape = path, offset, (rows, dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: object) -> np.ndarray:
        return self.read()[index]

    def read(self) -> np.ndarray:
        """The rows, read from the file."""
        count = self.shape[0] * self.shape[1]
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = np.fromfile(f, dtype="<f4", count=count)
        if data.size != count:
            raise OSError(f"{self.path}: ends before its {self.shape[0]} embeddings")
        return data.reshape(self.shape)

    @classmethod
    def in_npz(cls, path: Path, member: str) -> StoredRows | None:
        """The 2-D float32 array ``member`` (e.g. ``emb.npy``) of an uncompressed .npz file, None when it is
        compressed or another kind of array. Raises OSError, ValueError, KeyError or BadZipFile for a damaged
        file."""
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(ZIP_LOCAL_HEADER)
            if len(local) != ZIP_LOCAL_HEADER or local[:4] != b"PK\x03\x04":
                raise ValueError(f"{path}: no zip member at {info.header_offset}")
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + ZIP_LOCAL_HEADER + name_length + extra_length)
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran or len(shape) != 2 or dtype != np.dtype("<f4"):
                return None
            return cls(path, f.tell(), shape[0], shape[1])


class PendingEmbeddings:
    """Embeddings computed by a build, flushed to ``pending/`` so that a killed build loses little.

    Args:
        folder: the ``pending/`` folder (created; emptied if it holds another model's embeddings).
        sha: the sha256 of the checkpoint that makes the embeddings.
        dim: the embedding size.
        every: a modality's new embeddings are flushed every this many items...
        every_seconds: ...or when this many seconds passed since its last flush, whichever comes first (a
            killed update of a few hundred photos keeps what it embedded).

    Attributes:
        arrays: the embeddings read back from the folder, then those flushed, in that order, as
            :class:`StoredRows` (on disk, read when indexed).
        found: ``{modality: {item key: (number of its array in arrays, row)}}`` of every embedding held.
    """

    def __init__(self, folder: Path, sha: str, dim: int, every: int, every_seconds: float = 30.0) -> None:
        self.folder = folder
        self.every = every
        self.every_seconds = every_seconds
        self._last_flush = {m: time.monotonic() for m in MODALITIES}
        self.found: dict[str, dict[str, tuple[int, int]]] = {m: {} for m in MODALITIES}
        self.arrays: list[StoredRows] = []
        self._buffer: dict[str, tuple[list[str], list[np.ndarray]]] = {m: ([], []) for m in MODALITIES}
        manifest = folder / "manifest.json"
        try:
            ok = json.loads(manifest.read_text()) == {"model_sha256": sha, "dim": dim}
        except (OSError, ValueError):
            ok = False
        if not ok:
            shutil.rmtree(folder, ignore_errors=True)
            atomic_write_json({"model_sha256": sha, "dim": dim}, manifest)
            return
        for p in sorted(folder.glob("*.npz")):
            modality = p.name.split("-", 1)[0]
            if modality not in MODALITIES:
                continue
            try:
                with np.load(p, allow_pickle=False) as z:
                    keys = json.loads(z["keys"].tobytes().decode("utf-8"))
                emb = StoredRows.in_npz(p, "emb.npy")
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                continue  # a chunk that cannot be read is recomputed
            if emb is None or emb.shape != (len(keys), dim) or p.stat().st_size < emb.offset + 4 * len(keys) * dim:
                continue
            self._keep(modality, keys, emb)

    def add(self, modality: str, keys: list[str], emb: np.ndarray) -> None:
        """Keep new embeddings of items (by key); flushed once ``every`` of them wait or ``every_seconds`` passed."""
        buf_keys, buf_emb = self._buffer[modality]
        buf_keys.extend(keys)
        buf_emb.append(emb)
        if len(buf_keys) >= self.every or time.monotonic() - self._last_flush[modality] >= self.every_seconds:
            self.flush(modality)

    def flush(self, modality: str) -> None:
        """Write the waiting embeddings of a modality to a new file of the folder."""
        keys, embs = self._buffer[modality]
        if not keys:
            return
        emb = np.concatenate(embs).astype(np.float32)
        blob = np.frombuffer(json.dumps(keys).encode("utf-8"), dtype=np.uint8)
        name = f"{modality}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz"
        atomic_write(self.folder / name, lambda f: np.savez(f, keys=blob, emb=emb))
        stored = StoredRows.in_npz(self.folder / name, "emb.npy")
        assert stored is not None and stored.shape == emb.shape, name  # np.savez stores its arrays uncompressed
        self._keep(modality, keys, stored)
        self._buffer[modality] = ([], [])
        self._last_flush[modality] = time.monotonic()

    def _keep(self, modality: str, keys: list[str], emb: StoredRows) -> None:
        a = len(self.arrays)
        self.arrays.append(emb)
        for r, key in enumerate(keys):
            self.found[modality][key] = (a, r)
