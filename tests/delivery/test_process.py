"""The dispatcher in a process of its own (DISPATCHER_PROCESS=true, the default): it sends, it is woken at once,
its metrics reach /metrics, it is niced, it is replaced when it dies, and it stops in order with the app."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from service.delivery import process as dispatcher_process
from service.delivery.dispatcher import POLL_SECONDS
from service.outbox import QueueFull
from service.outbox.sqlite import sqlite_outbox
from tests.conftest import MAIL, captured_events, make_settings, running
from tests.e2e.processes import alive, wait_until
from tests.http.test_metrics import scrape, value, wait_for_metric
from tests.outbox.backends import notification as make_notification
from tests.smtp_sink import SmtpSink


def niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return int(stat.read().rpartition(")")[2].split()[16])


async def test_mail_is_sent_by_another_process_woken_at_once_and_counted_in_metrics(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Not niced: on a machine whose cores are kept busy, a niced child may wait longer than the poll for a turn,
    # and this test is about the wake-up (giving way is the next test's).
    settings = make_settings(tmp_path, smtp_sink.port, DISPATCHER_PROCESS=True, DISPATCHER_NICE=0)
    async with running(settings) as service:
        child = service.app.state.dispatcher.pid
        assert child is not None
        assert child != os.getpid()
        assert alive(child)
        posted = time.monotonic()
        response = await service.post(**MAIL)
        assert response.status_code == 202
        # Woken by the accept, not found by the slow poll.
        body = await service.wait_for_status(response.json()["id"], "sent", timeout=POLL_SECONDS - 1)
        assert time.monotonic() - posted < POLL_SECONDS - 1
        assert body["smtp_reply"].startswith("250")
        assert [m.message["Subject"] for m in smtp_sink.received] == ["Hello"]
        # The child's metrics reach this process' /metrics within a snapshot or two.
        await wait_for_metric(service, "notifications_sent_total", 1.0, timeout=5, tag="")
        samples = await scrape(service)
        assert value(samples, "notification_send_attempts_total", result="sent") == 1
        assert value(samples, "smtp_send_duration_seconds_count") == 1
        assert value(samples, "notifications_accepted_total") == 1


async def test_the_dispatcher_process_gives_way_to_the_http_process(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, DISPATCHER_PROCESS=True, DISPATCHER_NICE=7)
    async with running(settings) as service:
        child = service.app.state.dispatcher.pid
        assert niceness(child) == min(19, niceness(os.getpid()) + 7)


async def test_a_dispatcher_process_that_dies_is_replaced_and_mail_still_goes_out(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, DISPATCHER_PROCESS=True)
    async with running(settings) as service:
        first = service.app.state.dispatcher.pid
        with captured_events() as events:
            os.kill(first, signal.SIGKILL)
            await wait_until(lambda: service.app.state.dispatcher.pid != first, 10, lambda: "not replaced")
        response = await service.post(**MAIL)
        await service.wait_for_status(response.json()["id"], "sent")
        assert alive(service.app.state.dispatcher.pid)
    assert any(e["event"] == "dispatcher_process_exited" and e["pid"] == first for e in events)
    assert len(smtp_sink.received) == 1


async def test_stopping_the_app_lets_the_dispatcher_process_finish_in_flight_sends_and_exit(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    smtp_sink.handler.delay_seconds = 0.5
    settings = make_settings(tmp_path, smtp_sink.port, DISPATCHER_PROCESS=True, SEND_CONCURRENCY=2)
    async with running(settings) as service:
        child = service.app.state.dispatcher.pid
        ids = [(await service.post(**MAIL)).json()["id"] for _ in range(2)]
        await wait_until(lambda: bool(smtp_sink.handler.rcpt_asked), 10, lambda: "no send began")
    # The lifespan returned: the child has exited, after the sends it had begun.
    assert not alive(child)
    async with running(make_settings(tmp_path, smtp_sink.port)) as service:
        statuses = [(await service.client.get(f"/v1/notifications/{i}")).json()["status"] for i in ids]
    assert "sending" not in statuses
    assert len(smtp_sink.received) >= statuses.count("sent") >= 1


async def test_the_queue_limit_sees_mail_sent_by_the_dispatcher_process(tmp_path: Path) -> None:
    """The unsent count is read from the outbox, not kept by the process that accepts: the one that sends is
    another (this failed when each process kept its own count)."""
    path = tmp_path / "outbox.sqlite3"
    accepting = sqlite_outbox(path, queue_limit=2)
    sending = sqlite_outbox(path, lock=False)
    await accepting.open()
    await sending.open()
    try:
        await accepting.notifications.add([make_notification(), make_notification()])
        with pytest.raises(QueueFull):
            await accepting.notifications.add([make_notification()])
        (claimed, *_) = await sending.notifications.claim(1, time.time())
        await sending.notifications.mark_sent(claimed.id, smtp_reply="250 OK", refused=[], now=time.time(), attempt=1)
        await accepting.notifications.add([make_notification()])
        assert await accepting.notifications.count_unsent() == 2
    finally:
        await sending.close()
        await accepting.close()


async def test_a_stuck_dispatcher_process_turns_readiness_to_warn(
    tmp_path: Path, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Alive but silent (here: stopped by SIGSTOP; in life, an event loop blocked): nothing is being sent.
    monkeypatch.setattr(dispatcher_process, "SILENT_SECONDS", 1.5)
    settings = make_settings(tmp_path, smtp_sink.port, DISPATCHER_PROCESS=True)
    async with running(settings) as service:
        child = service.app.state.dispatcher.pid
        assert (await service.client.get("/health/ready")).json()["checks"]["dispatcher"] == "pass"
        os.kill(child, signal.SIGSTOP)
        try:
            await wait_until(lambda: not service.app.state.dispatcher.running, 10, lambda: "still counted as running")
            stuck = (await service.client.get("/health/ready")).json()
        finally:
            os.kill(child, signal.SIGCONT)
        await wait_until(lambda: service.app.state.dispatcher.running, 10, lambda: "still silent")
    assert stuck["status"] == "warn"
    assert stuck["checks"]["dispatcher"] == "fail"
