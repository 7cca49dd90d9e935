"""SMTP faults not covered in test_dispatcher.py, and a seeded chaos soak against a server that misbehaves at
random (drops, 4xx, 5xx, stalls): every notification must end `sent` or `failed` with a reason.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.chaos_smtp import ChaosHandler, Odds
from tests.conftest import MAIL, Service, captured_events, make_settings, running
from tests.e2e.processes import message_ids
from tests.smtp_sink import RecordingHandler, SmtpSink, free_port

# CHAOS_SEED=<n> make test replays one soak; the failure message names the seed.
CHAOS_SEED = int(os.environ.get("CHAOS_SEED", "20261125"))
SOAK_SIZE = 300


class TimedHandler(RecordingHandler):
    """Remembers when each DATA command came in."""

    def __init__(self) -> None:
        super().__init__()
        self.data_at: list[float] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.data_at.append(time.monotonic())
        return await super().handle_DATA(server, session, envelope)


async def test_a_4xx_reply_is_retried_after_an_exponential_backoff(tmp_path: Path) -> None:
    sink = SmtpSink()
    sink.handler = handler = TimedHandler()
    handler.data_replies.extend(["451 4.7.1 greylisted, come back later"] * 3)
    sink.start()
    settings = make_settings(tmp_path, sink.port, SEND_CONCURRENCY=1, RETRY_BASE_SECONDS=0.2, RETRY_MAX_SECONDS=2)
    try:
        # Inside running(): create_app() configures structlog, which would undo the capture.
        async with running(settings) as service:
            with captured_events() as events:
                notification_id = (await service.post(**MAIL)).json()["id"]
                sent = await service.wait_for_status(notification_id, "sent")
    finally:
        sink.stop()

    assert sent["attempts"] == 4
    assert sent["last_error"] == "451 4.7.1 greylisted, come back later"
    delays = [e["retry_in_seconds"] for e in events if e["event"] == "notification_retry_scheduled"]
    # base·2^(n-1), jittered into its upper half: 0.1 to 0.2 s, then 0.2 to 0.4 s, then 0.4 to 0.8 s.
    for attempt, delay in enumerate(delays, start=1):
        ceiling = 0.2 * 2 ** (attempt - 1)
        assert ceiling / 2 - 0.001 <= delay <= ceiling + 0.001, (attempt, delays)
    # The dispatcher waited out each delay before trying again (a lower bound: a slow machine only adds).
    gaps = [later - earlier for earlier, later in zip(handler.data_at, handler.data_at[1:], strict=False)]
    assert len(gaps) == 3
    assert all(gap >= delay - 0.01 for gap, delay in zip(gaps, delays, strict=True)), (gaps, delays)


async def test_every_recipient_refused_with_4xx_is_retried_until_accepted(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.refuse["ada@example.com"] = "450 4.2.0 mailbox busy"
    async with running(make_settings(tmp_path, smtp_sink.port, MAX_ATTEMPTS=50)) as service:
        notification_id = (await service.post(**MAIL)).json()["id"]
        for _ in range(500):
            waiting = (await service.client.get(f"/v1/notifications/{notification_id}")).json()
            if waiting["attempts"] >= 2:
                break
            await asyncio.sleep(0.02)
        assert waiting["status"] in ("queued", "sending")
        assert "450 4.2.0 mailbox busy" in waiting["last_error"]

        del smtp_sink.handler.refuse["ada@example.com"]
        await service.wait_for_status(notification_id, "sent")

    assert len(smtp_sink.received) == 1


@asynccontextmanager
async def raw_server(
    port: int, on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
) -> AsyncIterator[None]:
    """A TCP server that is not (yet) an SMTP server: it does `on_connect` with every connection."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await on_connect(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Accept the connection, never greet; wait for the client to give up and hang up.
    await reader.read()
    writer.close()


async def attempted(service: Service, notification_id: str, attempts: int) -> dict[str, Any]:
    for _ in range(500):
        body: dict[str, Any] = (await service.client.get(f"/v1/notifications/{notification_id}")).json()
        if body["attempts"] >= attempts and body["status"] == "queued":
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"not retried: {body}")


async def test_a_server_that_hangs_up_before_its_greeting_is_retried(tmp_path: Path, unreachable_port: int) -> None:
    settings = make_settings(tmp_path, unreachable_port, SEND_CONCURRENCY=1, MAX_ATTEMPTS=50)
    async with running(settings) as service:
        async with raw_server(unreachable_port, hang_up):
            notification_id = (await service.post(**MAIL)).json()["id"]
            waiting = await attempted(service, notification_id, 2)
        assert "connect" in waiting["last_error"]

        sink = SmtpSink(port=unreachable_port).start()
        try:
            await service.wait_for_status(notification_id, "sent")
        finally:
            sink.stop()
    assert len(sink.received) == 1


async def test_a_server_that_never_greets_is_given_up_on_after_the_send_deadline(
    tmp_path: Path, unreachable_port: int
) -> None:
    # The per-command timeout alone would hold the worker for 30 s; the send deadline frees it first.
    settings = make_settings(
        tmp_path, unreachable_port, SEND_CONCURRENCY=1, SMTP_TIMEOUT_SECONDS=30, SEND_TIMEOUT_SECONDS=0.3
    )
    async with running(settings) as service:
        async with raw_server(unreachable_port, say_nothing):
            notification_id = (await service.post(**MAIL)).json()["id"]
            waiting = await attempted(service, notification_id, 2)
        assert "within 0.3s" in waiting["last_error"]

        sink = SmtpSink(port=unreachable_port).start()
        try:
            await service.wait_for_status(notification_id, "sent")
        finally:
            sink.stop()
    assert len(sink.received) == 1


def outcomes(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [
            dict(row)
            for row in db.execute(
                "SELECT status, message_id, json_extract(content, '$.to[0]') AS recipient, last_error"
                " FROM notifications"
            )
        ]


@pytest.mark.slow
async def test_chaos_soak_every_notification_ends_sent_or_failed_with_a_reason(tmp_path: Path) -> None:
    # Stalls outlast the send deadline; the deadline is long enough that an ordinary reply on a busy machine
    # is not mistaken for one.
    handler = ChaosHandler(CHAOS_SEED, rcpt=Odds(stall=0.01), data=Odds(stall=0.01), stall_seconds=5)
    sink = SmtpSink()
    sink.handler = handler
    sink.start()
    settings = make_settings(
        tmp_path,
        sink.port,
        SEND_CONCURRENCY=4,
        SEND_TIMEOUT_SECONDS=2,
        MAX_ATTEMPTS=6,
        RETRY_BASE_SECONDS=0.02,
        RETRY_MAX_SECONDS=0.1,
    )
    seed = f"CHAOS_SEED={CHAOS_SEED}"
    try:
        async with running(settings) as service:
            for start in range(0, SOAK_SIZE, 50):
                responses = await asyncio.gather(
                    *(
                        service.post(to=[f"soak{n}@example.com"], subject=f"soak {n}", text="chaos")
                        for n in range(start, start + 50)
                    )
                )
                assert all(r.status_code == 202 for r in responses)
            # Settled: nothing queued or sending. Stuck rows (a lost wake-up, a worker that died) fail here.
            deadline = time.monotonic() + 120
            while {row["status"] for row in outcomes(settings.OUTBOX_PATH)} - {"sent", "failed"}:
                assert time.monotonic() < deadline, (seed, [r for r in outcomes(settings.OUTBOX_PATH)][:5])
                await asyncio.sleep(0.1)
    finally:
        sink.stop()

    rows = outcomes(settings.OUTBOX_PATH)
    print(f"\nchaos soak {seed}: faults {dict(handler.faults)}")
    assert len(rows) == SOAK_SIZE
    # The soak met every kind of fault at both stages.
    assert {kind.split("@")[0] for kind in handler.faults} == {"drop", "transient", "permanent", "stall"}, seed
    arrived = message_ids(handler.received)
    sent = {row["message_id"] for row in rows if row["status"] == "sent"}
    # Every `sent` one really arrived. (The converse can miss by a mail: when a reply is lost to the send
    # deadline on a busy machine, the server has the mail while the notification goes on to fail.)
    assert sent <= set(arrived), (seed, len(sent - set(arrived)))
    for row in rows:
        rejection = handler.rejected.get(row["recipient"])
        if rejection:
            # Rejected for good, at RCPT or DATA: failed after that one reply, which is recorded.
            assert row["status"] == "failed", (seed, row)
            assert rejection in row["last_error"], (seed, row)
        elif row["status"] == "failed":
            assert row["last_error"].startswith("gave up after 6 attempts: "), (seed, row)


# -- a server that answers in Latin-1 -------------------------------------------------------------------------


async def _latin1_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deliveries: list[bytes], data_reply: bytes
) -> None:
    """A minimal SMTP server whose replies are not UTF-8 (`f\\xfcr`), as some localised servers answer."""
    writer.write(b"220 raw.example ESMTP\r\n")
    in_data, body = False, b""
    while line := await reader.readline():
        if in_data:
            if line == b".\r\n":
                in_data = False
                deliveries.append(body)
                writer.write(data_reply)
            else:
                body += line
        elif line[:4].upper() == b"EHLO":
            writer.write(b"250-raw.example\r\n250 8BITMIME\r\n")
        elif line[:4].upper() == b"DATA":
            in_data, body = True, b""
            writer.write(b"354 go ahead\r\n")
        elif line[:4].upper() == b"RCPT" and b"bob@" in line:
            writer.write(b"450 4.2.2 Postfach voll f\xfcr bob\r\n")
        elif line[:4].upper() == b"QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            break
        else:
            writer.write(b"250 OK\r\n")
        await writer.drain()
    writer.close()


@pytest.mark.parametrize(
    ("data_reply", "status", "attempts", "delivered"),
    [
        (b"250 2.0.0 Nachricht angenommen f\xfcr Zustellung\r\n", "sent", 1, 1),
        (b"550 5.7.1 Nachricht abgelehnt f\xfcr diesen Empf\xe4nger\r\n", "failed", 1, 1),
    ],
    ids=["250", "550"],
)
async def test_a_reply_that_is_not_utf8_is_recorded_and_classified_like_any_other(
    tmp_path: Path, data_reply: bytes, status: str, attempts: int, delivered: int
) -> None:
    deliveries: list[bytes] = []
    port = free_port()
    server = await asyncio.start_server(lambda r, w: _latin1_server(r, w, deliveries, data_reply), "127.0.0.1", port)
    try:
        async with running(make_settings(tmp_path, port, MAX_ATTEMPTS=4)) as service:
            notification_id = (await service.post(to=["ada@example.com"], subject="Hi", text="x")).json()["id"]
            body = await service.wait_for_status(notification_id, "sent", "failed")
    finally:
        server.close()

    # Once: an outcome that could not be stored used to become a retry of a mail the server had taken.
    assert (body["status"], body["attempts"], len(deliveries)) == (status, attempts, delivered)
    assert "f\ufffdr" in (body["smtp_reply"] or body["last_error"])


async def test_a_recipient_refused_for_now_in_latin1_gets_no_duplicate_to_the_others(tmp_path: Path) -> None:
    deliveries: list[bytes] = []
    port = free_port()
    server = await asyncio.start_server(lambda r, w: _latin1_server(r, w, deliveries, b"250 ok\r\n"), "127.0.0.1", port)
    try:
        async with running(make_settings(tmp_path, port, MAX_ATTEMPTS=3)) as service:
            response = await service.post(to=["ada@example.com", "bob@example.com"], subject="Hi", text="x")
            body = await service.wait_for_status(response.json()["id"], "sent")
    finally:
        server.close()

    # ada got it once; bob's mailbox stayed full through every attempt: the mail is sent, bob listed as refused.
    assert len(deliveries) == 1
    assert body["attempts"] == 3
    assert [(r["address"], r["code"]) for r in body["refused_recipients"]] == [("bob@example.com", 450)]
    assert "f\ufffdr bob" in body["refused_recipients"][0]["message"]
