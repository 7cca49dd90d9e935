"""Limits on what comes in: a body larger than MAX_BODY_BYTES is refused with 413 before anything parses it,
past QUEUE_LIMIT unsent notifications a new one is refused with 429 (backpressure), and while the outbox cannot
be written (a full disk, the database down) with 503.

The body limit is pure ASGI: a declared Content-Length is checked up front (nothing is read), and every body,
chunked ones too, is counted while it streams, so a lying or absent Content-Length gets no more than the limit
into memory.
"""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.schemas import ErrorDetail
from service.outbox import OutboxUnavailable, QueueFull


def too_large_detail(max_bytes: int) -> str:
    return f"the request body is larger than MAX_BODY_BYTES={max_bytes} bytes"


# What a refused client is told to wait: the dispatcher drains a full queue in batches, so a few seconds
# is the right order, and it spreads a crowd of clients that all got 429 at once.
RETRY_AFTER_SECONDS = 5
# An outbox that cannot be written needs an operator (space freed, the database back): clients wait longer.
UNAVAILABLE_RETRY_AFTER_SECONDS = 30

LIMIT_RESPONSES: dict[int | str, dict[str, object]] = {
    413: {"model": ErrorDetail, "description": "The body is larger than MAX_BODY_BYTES"},
    429: {
        "model": ErrorDetail,
        "description": "QUEUE_LIMIT notifications wait to be sent already; retry later",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    },
    503: {
        "model": ErrorDetail,
        "description": "The outbox cannot be written (a full disk, the database down): nothing was taken; retry later",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    },
}


async def queue_full_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    return JSONResponse(
        {
            "detail": f"the queue is full: {exc.unsent} notifications wait to be sent and QUEUE_LIMIT is"
            f" {exc.limit}, so {exc.adding} more cannot be taken now; retry after {RETRY_AFTER_SECONDS} s"
        },
        status_code=429,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def outbox_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OutboxUnavailable)
    # The cause (a path, a database error) is in the log and /health/ready's details, not told to clients.
    return JSONResponse(
        {
            "detail": "the outbox cannot be written now (the disk may be full, or the database down): nothing was"
            f" accepted; retry after {UNAVAILABLE_RETRY_AFTER_SECONDS} s"
        },
        status_code=503,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
    )


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, too_large_detail(max_bytes))


class BodyLimitMiddleware:
    """`exempt` paths (the CSV upload) enforce a larger limit of their own while they stream to disk."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI lets an HTTPException raised while reading the body through to its handler.
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            # Reached here only when nothing inside turned it into a response (a route that streams the body).
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": too_large_detail(self.max_bytes)}, separators=(",", ":")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
