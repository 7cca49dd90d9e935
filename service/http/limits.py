"""Limits on what comes in: a body larger than MAX_BODY_BYTES is refused with 413 before anything parses it,
a JSON body nested deeper than MAX_JSON_DEPTH with 422 before it is parsed, past QUEUE_LIMIT unsent
notifications a new one is refused with 429 (backpressure), and while the outbox cannot be written (a full disk,
the database down) with 503.

The body limit is pure ASGI: a declared Content-Length is checked up front (nothing is read), and every body,
chunked ones too, is counted while it streams, so a lying or absent Content-Length gets no more than the limit
into memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.schemas import ErrorDetail
from service.outbox import OutboxUnavailable, QueueFull


def too_large_detail(max_bytes: int) -> str:
    return f"the request body is larger than MAX_BODY_BYTES={max_bytes} bytes"


# Arrays and objects inside one another, the body's own object counted: a real request needs under ten. Past a
# few hundred, parsing, validating and echoing the body recurse until Python's stack runs out (a 500).
MAX_JSON_DEPTH = 32
# Brackets only, `{}` read as `[]`: the nesting is the same.
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def nests_deeper_than(body: bytes, limit: int) -> bool:
    """Whether a JSON text nests arrays and objects more than `limit` deep, read without parsing it and in C-speed
    bytes operations only (a 1 MB body of brackets in a few ms; a Python loop over it took ~200 ms)."""
    # Fewer opening brackets than the limit, strings included, cannot nest deeper: almost every body stops here.
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    # Out of strings: drop escaped backslashes, then escaped quotes; what is left between two quotes is a string.
    outside = b"".join(body.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    brackets = outside.translate(_AS_SQUARE, _NOT_BRACKETS)
    # Each pass removes every innermost pair, one level of every structure: after `limit` passes a pair left
    # means a structure deeper than `limit`.
    for _ in range(limit):
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets = shorter
    # Or more than `limit` opened and never closed (a truncated body): deep already where it stops.
    return b"[]" in brackets or brackets.count(b"[") > limit


def too_deep_detail(limit: int) -> list[dict[str, object]]:
    # The shape of every other 422 (FastAPI's validation errors), without the input, which may be megabytes.
    return [
        {
            "type": "json_too_deep",
            "loc": ["body"],
            "msg": f"the JSON nests arrays and objects more than {limit} levels deep (the body itself is level 1)",
            "input": None,
        }
    ]


# What a refused client is told to wait: the dispatcher drains a full queue in batches, so a few seconds
# is the right order, and it spreads a crowd of clients that all got 429 at once.
RETRY_AFTER_SECONDS = 5
# An outbox that cannot be written needs an operator (space freed, the database back): clients wait longer.
UNAVAILABLE_RETRY_AFTER_SECONDS = 30

LIMIT_RESPONSES: dict[int | str, dict[str, object]] = {
    413: {
        "model": ErrorDetail,
        "description": "The body is larger than MAX_BODY_BYTES, or the attachments decode to more than"
        " MAX_ATTACHMENT_BYTES",
    },
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


def queue_full_detail(exc: QueueFull) -> str:
    return (
        f"the queue is full: {exc.unsent} notifications wait to be sent and QUEUE_LIMIT is"
        f" {exc.limit}, so {exc.adding} more cannot be taken now; retry after {RETRY_AFTER_SECONDS} s"
    )


async def queue_full_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    return JSONResponse(
        {"detail": queue_full_detail(exc)}, status_code=429, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
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


# A refusal's status and detail → the status and JSON body a path prefix answers with.
ErrorBody = Callable[[int, Any], tuple[int, Any]]


class BodyRefused(HTTPException):
    """Raised while the body is read: FastAPI lets an HTTPException from there through to its handler."""


class BodyTooLarge(BodyRefused):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, too_large_detail(max_bytes))


class JsonTooDeep(BodyRefused):
    def __init__(self, limit: int) -> None:
        super().__init__(422, too_deep_detail(limit))


class BodyLimitMiddleware:
    """`exempt` paths (the CSV upload) enforce a larger limit of their own while they stream to disk. A JSON
    body's nesting is checked once it is whole, before the app parses it."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        exempt: frozenset[str] = frozenset(),
        max_json_depth: int = MAX_JSON_DEPTH,
        error_bodies: dict[str, ErrorBody] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt
        self.max_json_depth = max_json_depth
        # Path prefix → the refusal's body there (the compat APIs' own error shapes); elsewhere {"detail": ...}.
        self.error_bodies = error_bodies or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared, is_json = _content_length_and_json(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send, BodyTooLarge(self.max_bytes))
            return

        received = 0
        started = False
        # The earlier chunks of a body that comes in more than one (kept only for a JSON one).
        earlier: list[bytes] = []

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                if is_json:
                    if message.get("more_body", False):
                        earlier.append(chunk)
                    elif nests_deeper_than(b"".join((*earlier, chunk)) if earlier else chunk, self.max_json_depth):
                        raise JsonTooDeep(self.max_json_depth)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyRefused as refused:
            # Reached here only when nothing inside turned it into a response (a route that streams the body).
            if started:
                raise
            await self._refuse(scope, send, refused)

    async def _refuse(self, scope: Scope, send: Send, refused: BodyRefused) -> None:
        shaped = next((make for prefix, make in self.error_bodies.items() if scope["path"].startswith(prefix)), None)
        status, content = (
            shaped(refused.status_code, refused.detail) if shaped else (refused.status_code, {"detail": refused.detail})
        )
        body = json.dumps(content, separators=(",", ":")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length_and_json(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length, and whether the body is one FastAPI parses as JSON (by its Content-Type)."""
    length, is_json = None, False
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif name == b"content-type":
            media_type = value.partition(b";")[0].strip().lower()
            is_json = media_type == b"application/json" or (
                media_type.startswith(b"application/") and media_type.endswith(b"+json")
            )
    return length, is_json
