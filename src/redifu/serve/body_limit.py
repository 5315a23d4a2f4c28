"""The request-size limit of ``redifu serve``, enforced while the body arrives.

A declared ``Content-Length`` over the limit is refused before any of the body is read; a body
without one (chunked transfer) is counted as its chunks arrive and refused at the first chunk
that passes the limit, so the server never holds more than the limit of one request.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

__all__ = ["BodySizeLimit", "BodyTooLarge"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    """Raised from ``receive`` when the body passes the limit (the application answers 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body: larger than this server's limit of {limit} bytes (redifu serve --max-body)")


class BodySizeLimit:
    """ASGI middleware: 413 for a body of more than ``max_bytes`` bytes.

    Args:
        app: The ASGI application it wraps.
        max_bytes: Largest body accepted.
    """

    def __init__(self, app: Callable, *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _answer(send, 400, "header 'Content-Length': not a number")
                return
            if length > self.max_bytes:
                await _answer(send, 413, str(BodyTooLarge(self.max_bytes)))
                return
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
