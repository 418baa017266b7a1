"""The embeddings of an unfinished build, kept in ``pending/`` so that a killed build loses little.

Every ``every`` new embeddings of a modality are written to ``pending/{modality}-{time}-{random}.npz``
(the item keys as UTF-8 JSON and the float32 embeddings), next to a ``manifest.json`` naming the model
(checkpoint sha256) and dimension they were made with. The next build with the same model reads them back
and embeds only what they lack; a build with another model starts the folder again. A committed build
deletes the folder (:func:`vsekit.index.store.commit_index`).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from vsekit.index.store import MODALITIES
from vsekit.io import atomic_write, atomic_write_json

__all__ = ["PendingEmbeddings"]


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
        arrays: the embeddings read back from the folder, then those flushed, in that order.
        found: ``{modality: {item key: (number of its array in arrays, row)}}`` of every embedding held.
    """

    def __init__(self, folder: Path, sha: str, dim: int, every: int, every_seconds: float = 30.0) -> None:
        self.folder = folder
        self.every = every
        self.every_seconds = every_seconds
        self._last_flush = {m: time.monotonic() for m in MODALITIES}
        self.found: dict[str, dict[str, tuple[int, int]]] = {m: {} for m in MODALITIES}
        self.arrays: list[np.ndarray] = []
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
                    emb = np.asarray(z["emb"], dtype=np.float32)
            except (OSError, ValueError, KeyError, EOFError):
                continue  # a chunk that cannot be read is recomputed
            if emb.ndim != 2 or emb.shape != (len(keys), dim):
                continue
            a = len(self.arrays)
            self.arrays.append(emb)
            for r, key in enumerate(keys):
                self.found[modality][key] = (a, r)

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
        a = len(self.arrays)
        self.arrays.append(emb)
        for r, key in enumerate(keys):
            self.found[modality][key] = (a, r)
        self._buffer[modality] = ([], [])
        self._last_flush[modality] = time.monotonic()
