"""A small client of the ``vsekit serve`` HTTP API, on the standard library only (no extra needed).

    from vsekit.serving import SearchClient

    client = SearchClient("http://127.0.0.1:8000")
    for hit in client.search(text="a red disc", k=5):
        print(hit.rank, f"{hit.score:.3f}", hit.path)
    client.search(image="query.jpg", target="text")   # image -> captions
    client.search(item=hits[0].id)                     # more like this indexed item
    client.search(text="a red disc", target="text", group="image")  # captions, one ImageGroup per image
"""

from __future__ import annotations

import io
import json
import mimetypes
import uuid
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode, urlsplit
from urllib.request import Request, urlopen

from vsekit.errors import DataError, VsekitError

__all__ = ["SearchClient", "ServiceError"]


class ServiceError(VsekitError):
    """The service answered with an error, or could not be reached.

    Attributes:
        status: the HTTP status (0 when the service could not be reached).
        code: the service's error code (``invalid_request``, ``not_found``, ...; ``unreachable`` when the
            service could not be reached).
        message: the service's one-line message.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})" if status else message)
        self.status = status
        self.code = code
        self.message = message


class SearchClient:
    """Client of one ``vsekit serve`` service.

    Args:
        base_url: the service's address, e.g. ``http://127.0.0.1:8000``.
        timeout: seconds to wait for an answer.

    Raises:
        DataError: if ``base_url`` is not an http(s) URL.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DataError(f"SearchClient: base_url must be an http(s) URL such as http://127.0.0.1:8000, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def search(
        self,
        text: str | None = None,
        image: str | Path | bytes | Any | None = None,
        item: str | None = None,
        k: int = 10,
        target: str = "image",
        offset: int = 0,
        group: str = "none",
    ) -> list[Any]:
        """The ``k`` best ``target`` items after ``offset`` for one query.

        Args:
            text: a query text.
            image: a query image: a file path, the file's bytes, a PIL image or an H×W×3 uint8 array.
            item: the id of an indexed item to search with.
            k: results per page.
            target: ``"image"`` or ``"text"``: which items to rank.
            offset: results to skip (pagination).
            group: ``"image"`` with ``target="text"``: the captions one per image, ``k`` and ``offset`` counting
                images (``"none"``: every caption on its own).

        Returns:
            :class:`vsekit.index.Hit` objects, best first; :class:`vsekit.index.ImageGroup` objects when grouped.

        Raises:
            DataError: if not exactly one query is given, or the image file cannot be read.
            ServiceError: if the service refuses the query (bad ``k``, unknown item, not an image...)
                or cannot be reached.
        """
        return self.search_page(text=text, image=image, item=item, k=k, target=target, offset=offset, group=group)["hits"]

    def search_page(
        self,
        text: str | None = None,
        image: str | Path | bytes | Any | None = None,
        item: str | None = None,
        k: int = 10,
        target: str = "image",
        offset: int = 0,
        group: str = "none",
    ) -> dict[str, Any]:
        """Like :meth:`search`, with the whole answer: ``{"hits": [Hit...], "has_more", "took_ms", "query"}``."""

        if sum(x is not None for x in (text, image, item)) != 1:
            raise DataError("SearchClient.search: give exactly one of text, image or item")
        if image is not None:
            fields = {"k": str(k), "offset": str(offset), "target": target, "group": group}
            body, ctype = _multipart(fields, "image", *_image_file(image))
            answer = self._request("POST", "/api/search", body=body, content_type=ctype)
        else:
            params: dict[str, Any] = {"k": k, "offset": offset, "target": target, "group": group}
            params.update({"q": text} if text is not None else {"item": item})
            answer = self._request("GET", "/api/search?" + urlencode(params))
        answer["hits"] = [_hit(h) for h in answer["hits"]]
        return answer

    def item(self, item_id: str) -> dict[str, Any]:
        """An indexed item's metadata (``id``, ``modality``, ``path``, ``caption``, URLs...)."""
        return self._request("GET", _item_path(item_id))

    def thumbnail(self, item_id: str, size: int = 256) -> bytes:
        """A JPEG thumbnail of an item's image, ``size`` pixels on its longest side."""
        return self._request("GET", _item_path(item_id) + f"/thumbnail?size={int(size)}", raw=True)

    def image(self, item_id: str) -> bytes:
        """An item's image file, as stored in the collection."""
        return self._request("GET", _item_path(item_id) + "/image", raw=True)

    def stats(self) -> dict[str, Any]:
        """Index size, model, backend, query latency percentiles (``latency_ms``) and uptime."""
        return self._request("GET", "/api/stats")

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "items": N}`` when the service is up with its index loaded."""
        return self._request("GET", "/api/health")

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, raw: bool = False) -> Any:
        request = Request(self.base_url + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        request.add_header("Accept", "application/json")
        try:
            with urlopen(request, timeout=self.timeout) as response:
                data = response.read()
        except HTTPError as exc:
            detail = exc.read()
            try:
                error = json.loads(detail)["error"]
                raise ServiceError(exc.code, str(error["code"]), str(error["message"])) from None
            except (ValueError, KeyError, TypeError):
                raise ServiceError(exc.code, "http_error", f"{method} {path}: HTTP {exc.code} {exc.reason}") from None
        except (URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(0, "unreachable", f"cannot reach the service at {self.base_url}: {reason}") from None
        return data if raw else json.loads(data)


def _hit(answer: dict[str, Any]) -> Any:
    """A hit of the service's answer as a :class:`Hit`, or an :class:`ImageGroup` when it lists its image's
    captions (a grouped search)."""
    from vsekit.index.hits import Hit, ImageGroup

    hit = {f: answer.get(f) for f in ("rank", "score", "id", "modality", "path", "caption")}
    if answer.get("captions") is None:
        return Hit(**hit)
    captions = [Hit(rank=c["rank"], score=c["score"], id=c["id"], modality="text", path=hit["path"], caption=c.get("caption"))
                for c in answer["captions"]]  # fmt: skip
    return ImageGroup(**hit, image_id=answer.get("image_id"), captions=captions)


def _item_path(item_id: str) -> str:
    return "/api/items/" + quote(item_id, safe="/")


def _image_file(image: Any) -> tuple[str, bytes, str]:
    """(file name, bytes, content type) of a query image given as a path, bytes, PIL image or array."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read the query image ({exc.strerror or exc})") from None
        return path.name, data, mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "image", bytes(image), "application/octet-stream"
    from PIL import Image

    if not isinstance(image, Image.Image):
        import numpy as np

        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise DataError(f"SearchClient.search: image arrays must be H×W×3 uint8, got {array.dtype} {array.shape}")
        image = Image.fromarray(array)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG")
    return "image.png", out.getvalue(), "image/png"


def _multipart(fields: dict[str, str], file_field: str, filename: str, data: bytes, file_type: str) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body and its content type."""
    boundary = uuid.uuid4().hex
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    chunks = []
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{safe_name}"\r\nContent-Type: {file_type}\r\n\r\n'
    chunks += [head.encode(), data, f"\r\n--{boundary}--\r\n".encode()]
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
