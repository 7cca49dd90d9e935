"""The app's own ASGI middleware: the request id every log line and answer carries, and the clock of each request.

Pure ASGI (a class with `__call__(scope, receive, send)`), not BaseHTTPMiddleware: no task and no stream per
request on the accept path.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# Anything else a client sends as a method is counted as OTHER, so it cannot blow up the label's values.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"


class RequestIdMiddleware:
    """Takes `X-Request-ID` from the request (or makes one), binds it to the log context, echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        encoded = request_id.encode()

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, encoded)]
            await send(message)

        # bind/reset rather than `bound_contextvars()`: the same binding without a generator context manager.
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


def _request_id_from(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            candidate: str = value.decode("latin-1")
            # A client's id is only trusted when it is short and plain: it goes into logs and the outbox.
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class HttpMetricsMiddleware:
    """Counts and times requests per route template and status class.

    The clock stops at the last `http.response.body` message, not when the app returns: Starlette runs a
    route's BackgroundTasks inside the response call, after the body is sent, and that work is not latency
    the client sees.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        observed = False

        async def send_timed(message: Message) -> None:
            nonlocal status, observed
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not observed:
                observed = True
                self._observe(scope, status, time.perf_counter() - started)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            # The app raised before answering (the server's error middleware answers 500) or the client left.
            if not observed:
                self._observe(scope, status, time.perf_counter() - started)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in HTTP_METHODS else "OTHER"
        # The route's template (`/v1/notifications/{notification_id}`), never the raw path: one series per
        # route, not one per notification id.
        route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
        self.metrics.observe_request(method, route, status, seconds)
