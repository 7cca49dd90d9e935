"""A real webhook receiver for tests: an HTTP server in a thread, on a port of its own, that checks every request's
signature with the standardwebhooks library's verifier and answers as the test says (a status, or a hang)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = "whsec_" + base64.b64encode(b"test-secret-of-32-bytes-long!!!!").decode()


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]
    body: bytes
    # The body as the verifier returned it; None when the signature did not verify.
    event: dict[str, Any] | None

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """Answers `status` (200) to every request, or the next of `replies` while any are left; while `hang` is
    cleared, requests wait for it (a stalled receiver). `requests` holds every request, verified or not."""

    def __init__(self, port: int = 0, secret: str = SECRET) -> None:
        self.webhook = Webhook(secret)
        self.status = 200
        self.replies: deque[int] = deque()
        self.requests: list[Request] = []
        self.hang = threading.Event()
        self.hang.set()
        self.waiting = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {key.lower(): value for key, value in self.headers.items()}
                try:
                    event = receiver.webhook.verify(body, headers)
                except WebhookVerificationError:
                    event = None
                with receiver._lock:
                    receiver.requests.append(Request(headers, body, event))
                    receiver.waiting += 1
                receiver.hang.wait()
                with receiver._lock:
                    receiver.waiting -= 1
                    status = receiver.replies.popleft() if receiver.replies else receiver.status
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.hang.set()
        self.server.shutdown()
        self.server.server_close()

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """The verified events, in arrival order, of one type or all."""
        return [
            r.event for r in list(self.requests) if r.event and (event_type is None or r.event["type"] == event_type)
        ]

    async def wait_for(
        self, event_type: str, count: int = 1, timeout: float = 15.0, **data: Any
    ) -> list[dict[str, Any]]:
        """At least `count` verified events of `event_type` whose data has these values, waited for."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(event_type) if all(e["data"].get(k) == v for k, v in data.items())]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                seen = [(r.event or {}).get("type", "unverified") for r in self.requests]
                raise AssertionError(f"{len(found)} {event_type} events {data} within {timeout}s, want {count}: {seen}")
            await asyncio.sleep(0.02)
