"""Reading request bodies within a limit, enforced while streaming: a body over the limit is
refused before it is held in memory, whether or not it declared its length up front."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.types import Message

__all__ = ["BodyError", "read_body", "read_payload", "read_payload_kind", "MAX_FORM_BYTES"]

MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 100


class BodyError(Exception):
    """The body cannot be taken; ``status`` is the answer (400 or 413)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


async def read_body(request: Request, *, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BodyError("bad Content-Length")
        if int(declared) > limit:
            raise BodyError(f"request too large (over {limit} bytes)", status=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(f"request too large (over {limit} bytes)", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_payload(request: Request, *, limit: int = MAX_FORM_BYTES) -> dict[str, Any]:
    """A JSON object or a form, as a dict; BodyError when it is neither."""
    return (await read_payload_kind(request, limit=limit))[0]


async def read_payload_kind(
    request: Request, *, limit: int = MAX_FORM_BYTES
) -> tuple[dict[str, Any], bool]:
    """``read_payload``, and whether the body was JSON (the answer then is JSON too)."""
    body = await read_body(request, limit=limit)
    if _is_json(request.headers.get("content-type", ""), body):
        try:
            data = json.loads(body or b"{}")
        except (ValueError, RecursionError):  # RecursionError: nested thousands deep
            raise BodyError("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BodyError("the JSON body must be an object")
        return data, True
    form = await _replay(request, body).form(max_files=0, max_fields=MAX_FORM_FIELDS)
    return {k: v for k, v in form.items() if isinstance(v, str)}, False


def _is_json(content_type: str, body: bytes) -> bool:
    """Declared JSON; or an object sent with no content type (``requests.post(url,
    data=json.dumps(...))``) or as text/plain (``fetch()`` with a string body), which no form
    begins with. A form content type is a form whatever its body."""
    if "application/json" in content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", "text/plain") and body.lstrip()[:1] == b"{"


def _replay(request: Request, body: bytes) -> Request:
    """The same request with its body already read, for Starlette's form parser."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)
