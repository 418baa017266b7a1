"""Every error the service answers is ``{"error": {"code", "message"}}`` with a 4xx/5xx status, never a traceback."""

import logging
from collections.abc import Iterable
from typing import Any

from vsekit.errors import ConfigError

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.routing import Match
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(f"vsekit serve needs the 'serve' extra ({exc.name} is missing): pip install 'vsekit[serve]'") from None

log = logging.getLogger("vsekit.serving.app")

STATUS_CODES = {
    400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests", 500: "internal_error",
    503: "unavailable",
}  # fmt: skip


class ApiError(HTTPException):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(status_code=status, detail=message)
        self.code = code or STATUS_CODES.get(status, "error")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def without_paths(message: str, private: Iterable[str]) -> str:
    """``message`` with every server-side folder of ``private`` (and anything under it) replaced by ``<…>``."""
    for folder in sorted({p.rstrip("/") for p in private if p and p.rstrip("/")}, key=len, reverse=True):
        message = message.replace(folder, "<…>")
    return message


def shorten(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_message(exc: RequestValidationError) -> str:
    """One line from pydantic's errors: ``k: Input should be less than or equal to 100 (got 1000)``."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = ".".join(loc[1:]) if len(loc) > 1 else (loc[0] if loc else "request")
        if err.get("type") == "json_invalid":
            parts.append(f"body: malformed JSON ({err.get('ctx', {}).get('error', 'cannot parse')})")
            continue
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            parts.append(f"{where}: required")
        else:
            got = err.get("input")
            parts.append(f"{where}: {msg}" + ("" if got is None or isinstance(got, dict) else f" (got {shorten(got)})"))
    return "; ".join(parts) or "invalid request"


def allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405: the methods of every route at the request's path (Starlette names only those
    of the first such route, so ``PUT /api/search`` answered ``Allow: GET`` although POST is served there too)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI, service: Any) -> None:
    """Answer HTTP errors, invalid requests and internal errors as JSON errors, counting them in ``service.errors``."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        service.errors += 1
        code = getattr(exc, "code", None) or STATUS_CODES.get(exc.status_code, "error")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.url.path[:200]}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path[:200]}"
            exc.headers = {**(exc.headers or {}), "Allow": allowed_methods(request)}
        elif exc.status_code == 400 and message == "There was an error parsing the body":
            message = "malformed request body (expected multipart/form-data with an 'image' file)"
        message = without_paths(message, service.private_paths())  # no server-side path leaves the service
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        service.errors += 1
        return error_response(422, "invalid_request", validation_message(exc))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        service.errors += 1
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "internal error (the service log has the details)")
