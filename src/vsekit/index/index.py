"""The module that held the whole index before it was split (kept so that its imports keep working).

:class:`Index` and :class:`Hit` are in :mod:`vsekit.index.search`, the build in :mod:`vsekit.index.build`,
the files in :mod:`vsekit.index.store`, query embedding in :mod:`vsekit.index.queries`; import them from
:mod:`vsekit.index`.
"""

from vsekit.index.queries import MAX_QUERY_PIXELS
from vsekit.index.search import Hit, Index
from vsekit.index.store import FORMAT, MODALITIES, VERSION, sha256_file

__all__ = ["FORMAT", "MAX_QUERY_PIXELS", "MODALITIES", "VERSION", "Hit", "Index", "sha256_file"]
