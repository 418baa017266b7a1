"""Plain ASGI middleware (no per-request task overhead): the allowed ``Host`` names, security headers and the
upload size limit."""

import ipaddress
import re
from collections.abc import Iterable

from vsekit.errors import ConfigError

try:
    from starlette.datastructures import Headers, MutableHeaders
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(f"vsekit serve needs the 'serve' extra ({exc.name} is missing): pip install 'vsekit[serve]'") from None

from .errors import ApiError, error_response, shorten

PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets inline styles and draws its icons from data: URLs
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers allowed beside the file itself


HOST_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def check_allowed_hosts(names: Iterable[str]) -> frozenset[str]:
    """The host names to serve besides IP addresses and ``localhost``: ``name``, ``*.domain`` or ``*`` (any)."""
    out = set()
    for name in names:
        name = str(name).strip().lower().rstrip(".")
        if name != "*" and not HOST_PATTERN.match(name):
            raise ConfigError(f"serve: allowed host {name!r} is not a host name (e.g. search.example.org or *.example.org)")
        out.add(name)
    return frozenset(out)


def host_name(header: str) -> str:
    """The name or address of a ``Host`` header, without its port and brackets, lower case."""
    host = header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).rstrip(".")


def host_allowed(header: str, names: frozenset[str]) -> bool:
    """Whether a request for ``Host: header`` is served: IP addresses always (a page cannot rebind an address),
    ``localhost`` and its subdomains, and the configured ``names``."""
    host = host_name(header)
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if "*" in names or host == "localhost" or host.endswith(".localhost") or host in names:
        return True
    return any(n.startswith("*.") and host.endswith(n[1:]) for n in names)


class AllowedHosts:
    """Answers 400 to a request whose ``Host`` names another site: a web page that rebinds its own name to this
    machine's address (DNS rebinding) cannot read the index through the user's browser."""

    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = Headers(scope=scope).get("host")
            if host is not None and not host_allowed(host, self.names):
                msg = f"host {shorten(host_name(host))} is not served here (vsekit serve --allowed-host NAME serves a name, e.g. behind a proxy)"
                await error_response(400, "invalid_host", msg)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds a Content-Security-Policy and the usual hardening headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"] == "/docs" else PAGE_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("content-security-policy", csp)
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("x-frame-options", "DENY")
                headers.setdefault("referrer-policy", "no-referrer")
                headers.setdefault("cross-origin-opener-policy", "same-origin")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UploadLimit:
    """Refuses request bodies larger than ``limit`` bytes: by ``Content-Length`` before reading anything,
    and while reading (chunked uploads, or a ``Content-Length`` that lies); checks that a POST to
    ``/api/search`` is ``multipart/form-data``."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["path"] == "/api/search" and scope["method"] == "POST":  # other methods: 405 from the router
            ctype = headers.get("content-type", "")
            if not ctype.lower().startswith("multipart/form-data"):
                msg = f"POST /api/search takes multipart/form-data with an 'image' file, got {ctype or 'no content type'!r}; search by text with GET /api/search?q=..."
                await error_response(415, "unsupported_media_type", msg)(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await error_response(400, "bad_request", f"Content-Length: not a number ({shorten(length)})")(scope, receive, send)
                return
            if int(length) > self.limit:
                msg = f"request body of {int(length)} bytes is larger than the limit of {self.limit} bytes"
                await error_response(413, "payload_too_large", msg)(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, f"request body is larger than the limit of {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)
