"""Exceptions for user mistakes.

Every error a user can cause (a missing file, a malformed field, a bad option) is raised as a
:class:`VsekitError` whose message is one line naming the file or field and what was expected.
The CLI prints such errors as ``error: <message>`` and exits with status 2, never with a traceback.
Anything else that escapes is a bug in vsekit.
"""

from __future__ import annotations


class VsekitError(Exception):
    """Base class of all user-facing errors."""


class ConfigError(VsekitError):
    """A config file, preset or override is invalid."""


class DataError(VsekitError):
    """A data file is missing, malformed or inconsistent."""


class CheckpointError(VsekitError):
    """A checkpoint is missing, malformed or does not match the model."""


class FolderInUseError(VsekitError):
    """Another process is writing the output folder (a run, an index, extracted features)."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when empty), at most ``limit`` characters: what a
    one-line error quotes of a library's failure."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
