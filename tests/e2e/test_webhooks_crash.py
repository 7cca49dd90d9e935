"""Webhooks across a SIGKILL: events whose deliveries were pending or in flight when the process died all reach
the receiver after a restart, each verified with the library's verifier. The receiver runs in the test process,
so it outlives the kill and counts what really arrived."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MAIL
from tests.e2e.processes import service_env, start_service, wait_until
from tests.smtp_sink import SmtpSink
from tests.webhook_receiver import SECRET, Receiver

MAILS = 20
CONCURRENCY = 2


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def delivery_statuses(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT status, count(*) FROM webhook_deliveries GROUP BY status").fetchall())


def sent_ids(receiver: Receiver, since: int = 0) -> set[str]:
    return {
        r.event["data"]["id"] for r in receiver.requests[since:] if r.event and r.event["type"] == "notification.sent"
    }


async def test_sigkill_with_deliveries_pending_and_in_flight_loses_no_event(
    tmp_path: Path, smtp_sink: SmtpSink, receiver: Receiver
) -> None:
    # The receiver hangs: the first deliveries are in flight at the kill, the rest wait behind them.
    receiver.hang.clear()
    outbox = tmp_path / "outbox.sqlite3"
    env = service_env(
        outbox,
        smtp_sink.port,
        WEBHOOK_URLS=receiver.url,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_CONCURRENCY=CONCURRENCY,
        WEBHOOK_TIMEOUT_SECONDS=120,
        WEBHOOK_RETRY_BASE_SECONDS=0.05,
        WEBHOOK_RETRY_MAX_SECONDS=0.5,
    )

    first = await start_service(env, tmp_path / "first.log")
    try:
        async with httpx.AsyncClient(base_url=first.base_url) as client:
            ids = [(await client.post("/v1/notifications", json=MAIL)).json()["id"] for _ in range(MAILS)]
        # Mail goes while the webhooks are stuck; then every event is written and two requests hang.
        await wait_until(lambda: len(smtp_sink.received) >= MAILS, 60, lambda: f"{len(smtp_sink.received)} mails")
        await wait_until(
            lambda: receiver.waiting == CONCURRENCY and sum(delivery_statuses(outbox).values()) >= MAILS,
            60,
            lambda: f"{receiver.waiting} requests waiting, deliveries {delivery_statuses(outbox)}",
        )
        first.kill()
    finally:
        first.stop()

    at_kill = delivery_statuses(outbox)
    assert at_kill == {"sending": CONCURRENCY, "pending": MAILS - CONCURRENCY}, at_kill
    before_restart = len(receiver.requests)
    receiver.hang.set()

    second = await start_service(env, tmp_path / "second.log")
    try:
        # Every event arrives from the second process, the two that were in flight included: none of them had
        # been answered before the kill.
        await wait_until(
            lambda: sent_ids(receiver, before_restart) == set(ids),
            60,
            lambda: f"missing after the restart: {sorted(set(ids) - sent_ids(receiver, before_restart))[:5]}",
        )
        await wait_until(
            lambda: delivery_statuses(outbox) == {"delivered": MAILS},
            30,
            lambda: f"not all recorded delivered: {delivery_statuses(outbox)}",
        )
    finally:
        second.terminate(timeout=30)

    assert all(r.event is not None for r in receiver.requests), "every request verified with the library"
    # One webhook-id per event: the repeats of the in-flight two carry the id of their first attempt.
    by_notification: dict[str, set[str]] = {}
    for request in receiver.requests:
        assert request.event is not None
        by_notification.setdefault(request.event["data"]["id"], set()).add(request.event_id)
    assert all(len(event_ids) == 1 for event_ids in by_notification.values())
    assert len(receiver.requests) - MAILS <= CONCURRENCY
    [recovered] = [e for e in second.events() if e["event"] == "webhook_deliveries_recovered"]
    assert recovered["count"] == CONCURRENCY
