"""Run the search service with uvicorn: what ``vsekit serve`` does."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from vsekit.errors import ConfigError

__all__ = ["serve"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MAX_REQUEST_HEAD = 64 * 1024
"""Bytes of request line and headers that reach the application (JSON errors from there on); a longer head is
answered by the HTTP parser before vsekit: status 400, ``text/plain``, connection closed."""


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free port).

    Raises:
        ConfigError: if the address is in use or cannot be bound.
    """
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: expected 0 to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    index: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    cors_origins: Iterable[str] = (),
    allowed_hosts: Iterable[str] = (),
    device: str = "cpu",
    log: Callable[[str], None] | None = print,
    log_level: str = "warning",
    **limits: int,
) -> None:
    """Serve the search page and API over ``index`` until interrupted.

    Args:
        index: an open :class:`~vsekit.index.Index` or an index folder (loaded once, before listening).
        host: address to listen on; the default (127.0.0.1) is reachable from this machine only.
        port: TCP port (0: any free port; the address is logged).
        cors_origins: origins allowed to call the API from other sites' pages (none by default).
        allowed_hosts: host names served besides IP addresses, ``localhost`` and ``host`` itself (when it is a
            name): the names a reverse proxy or the users' browsers reach this server by.
        device: where the model runs when ``index`` is a folder.
        log: where to write the address and warnings (None: nowhere).
        log_level: uvicorn's log level (``warning`` by default: no line per request).
        **limits: :func:`~vsekit.serving.app.create_app` limits (``max_k``, ``max_upload_bytes``, ...).

    Raises:
        ConfigError: if the address cannot be bound or an option is invalid.
        DataError: if the index cannot be loaded.
    """
    import uvicorn

    from vsekit.index import Index

    from .app import create_app

    if isinstance(index, (str, Path)):
        index = Index.load(index, device=device)  # loaded once, and a bad folder is a one-line error
    names = [*allowed_hosts, *([host] if host not in ("", "*") and not _is_address(host) else [])]
    app = create_app(index, cors_origins=tuple(cors_origins), allowed_hosts=names, device=device, **limits)
    sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    emit = log or (lambda _msg: None)
    stats = index.stats()
    emit(f"serving {index.path} ({stats['num_images']} images, {stats['num_texts']} texts) at http://{shown}:{bound_port}/  (API reference: /docs)")
    if not _is_loopback(host):
        emit(f"warning: listening on {host}: anyone who can reach this machine can search the index and read its images")
    sys.stdout.flush()
    config = uvicorn.Config(
        app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
        http="h11", h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
    )  # fmt: skip
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops gracefully on Ctrl-C, then raises the signal again
        emit("stopped")
    finally:
        sock.close()
