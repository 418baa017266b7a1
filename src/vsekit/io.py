"""Atomic file writes: a reader never sees a half-written checkpoint, index or result file; and one writer per
output folder (:func:`exclusive_folder`)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import torch

from .errors import DataError, FolderInUseError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: exclusive_folder holds nothing
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".vsekit.lock"
"""The file in an output folder that :func:`exclusive_folder` locks (it stays; only the lock goes)."""
ORPHAN_WAIT = 10.0
"""Seconds :func:`exclusive_folder` waits for a lock whose recorded holder is dead: processes it forked (DataLoader
workers) keep the lock until they notice and exit, which torch's workers do within 5 s."""


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` atomically: ``write(fileobj)`` fills a temporary file in the same folder,
    which is flushed, fsynced and renamed over ``path``.

    Args:
        path: destination file.
        write: a function that writes the content to the open file object it is given.
        mode: ``"wb"`` for bytes or ``"w"`` for text.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporaries that :func:`atomic_write` left for ``names`` in ``folder`` when its process was killed
    mid-write (``.last.pt.<random>.tmp``). Call it only where no other process is writing those files.

    Returns:
        The files removed.
    """
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{glob.escape(name)}.*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON through :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent) + "\n"), mode="w")


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(text), mode="w")


@contextlib.contextmanager
def exclusive_folder(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the existing folder ``folder`` for one writer while the block runs.

    An exclusive advisory lock (``flock``) on ``folder/.vsekit.lock``, which also records the holder's process id
    and command. The kernel releases it when the block ends or the process dies, so a killed run resumes at
    once, while a second program writing the same folder (two trainings in one run folder, two builds of one
    index) stops before it touches anything. The file is never deleted: removing it while another process has
    it open would let two writers lock two different files. Without ``fcntl`` (Windows) nothing is held.

    A lock whose recorded holder process no longer exists is waited for up to :data:`ORPHAN_WAIT` seconds (a
    killed training's DataLoader workers hold it until they exit).

    Args:
        folder: the output folder (must exist).
        what: the option or field that named it, for the error message (``"out_dir"``).

    Raises:
        FolderInUseError: another process holds the folder.
        DataError: the lock file cannot be opened (a folder without write permission).
    """
    folder = Path(folder)
    if fcntl is None:  # pragma: no cover - not POSIX
        yield folder
        return
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise DataError(f"{what}: cannot write in {folder} ({e.strerror}: {LOCK_FILE})") from None
    try:
        holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
        if not _lock_within(fd, 0 if _alive(holder) else ORPHAN_WAIT):
            raise FolderInUseError(
                f"{what}: {folder} is being written by {holder}; wait for it to end or choose another folder"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock


def _lock_within(fd: int, seconds: float) -> bool:
    """Take the exclusive lock of ``fd``, trying for up to ``seconds``; whether it was taken."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _alive(holder: str) -> bool:
    """Whether the process a lock file names (``pid N (...)``) exists on this machine; True when it names none."""
    match = re.match(r"pid (\d+)", holder)
    if match is None:
        return True
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
