"""A real SMTP server for tests: aiosmtpd in its own thread, recording every mail it takes.

Fault cases are scripted on the handler: replies to hand out for the next DATA commands, recipients to
refuse, a stall before answering, connections to drop (at MAIL FROM or at DATA).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    # aiosmtpd's Controller cannot bind port 0 (it connects to the port it was given to check readiness).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    # time.monotonic() when the server took it: pacing tests look at the spread, never at a single value.
    at: float = field(default_factory=time.monotonic)

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class RecordingHandler:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.data_replies: deque[str] = deque()
        self.refuse: dict[str, str] = {}
        # Recipients refused this many more times (then accepted), with the reply in `refuse`: greylisting.
        self.refuse_times: dict[str, int] = {}
        # Every RCPT TO the server was asked, accepted or not, in order.
        self.rcpt_asked: list[str] = []
        # time.monotonic() of every MAIL FROM, taken or not: when each send began.
        self.mail_at: list[float] = []
        self.stall_next_data = 0
        self.stall_seconds = 0.0
        # Cleared: every DATA waits (the mail in flight) until a test sets it again.
        self.data_open = threading.Event()
        self.data_open.set()
        self.delay_seconds = 0.0
        self.drop_next_data = 0
        # Hang up at the next MAIL FROM, before anything of the mail is sent: like a server that closed an idle
        # connection a moment before the client used it again.
        self.drop_next_mail = 0
        # When set to an Event, DATA waits for it before taking the mail; `held` counts the mails waiting so.
        self.hold: threading.Event | None = None
        self.held = 0
        self._lock = threading.Lock()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.mail_at.append(time.monotonic())
        with self._lock:
            drop = self.drop_next_mail > 0
            self.drop_next_mail -= drop
        if drop:
            server.transport.close()
            return "421 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt_asked.append(address)
        if address in self.refuse:
            if address not in self.refuse_times:
                return self.refuse[address]
            if self.refuse_times[address] > 0:
                self.refuse_times[address] -= 1
                return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        while not self.data_open.is_set():
            await asyncio.sleep(0.01)
        with self._lock:
            stall = self.stall_next_data > 0
            self.stall_next_data -= stall
        if stall:
            # A server that goes quiet: by the time it would answer, the client has given up.
            await asyncio.sleep(self.stall_seconds)
            return "451 4.4.2 took too long"
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if self.hold is not None:
            self.held += 1
            await asyncio.to_thread(self.hold.wait)
        with self._lock:
            if self.drop_next_data:
                self.drop_next_data -= 1
                server.transport.close()
                return "421 closing"
            if self.data_replies:
                return self.data_replies.popleft()
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


class SmtpSink:
    """`ssl_context`: implicit TLS from the first byte; `server_options`: aiosmtpd's SMTP options (tls_context for
    STARTTLS, require_starttls, authenticator, auth_required, ...); `smtputf8`: a server that offers SMTPUTF8
    takes addresses whose local part is not ASCII."""

    def __init__(
        self,
        port: int | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        smtputf8: bool = False,
        **server_options: Any,
    ) -> None:
        self.port = port or free_port()
        self.handler = RecordingHandler()
        self.ssl_context = ssl_context
        self.server_options = {"enable_SMTPUTF8": smtputf8, **server_options}
        self._controller: Controller | None = None

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def start(self) -> SmtpSink:
        self._controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            ready_timeout=10,
            ssl_context=self.ssl_context,
            **self.server_options,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpt_tos]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"SMTP sink got {len(self.received)} mails, expected {count}")
            await asyncio.sleep(0.02)
        return self.received
