"""Serving an index over HTTP: ``vsekit serve``, its web page, and a small HTTP client.

* :func:`create_app` — the FastAPI application over an :class:`~vsekit.index.Index` (needs the ``serve``
  extra: ``pip install 'vsekit[serve]'``);
* :func:`serve` — run it with uvicorn (what ``vsekit serve INDEX_DIR`` does);
* :class:`SearchClient` — a client of the HTTP API on the standard library only.
"""

from __future__ import annotations

from typing import Any

from .client import SearchClient, ServiceError

__all__ = ["SearchClient", "ServiceError", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    # the app needs fastapi (the 'serve' extra): import it only when asked for
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
