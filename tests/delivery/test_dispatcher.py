"""The dispatcher against a real SMTP server: retries, faults, restarts and shutdown."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from service.config import Settings
from service.delivery.dispatcher import retry_delay
from service.outbox import Notification
from tests.conftest import MAIL, make_settings, running
from tests.smtp_sink import SmtpSink


def statuses(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT status, count(*) FROM notifications GROUP BY status").fetchall())


def test_retry_delays_grow_exponentially_with_jitter_and_a_cap(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, 1025, RETRY_BASE_SECONDS=2, RETRY_MAX_SECONDS=60)

    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (20, 60)]:
        delays = [retry_delay(attempt, settings) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered: retries of many mails don't land at the same instant


async def test_a_notification_queued_by_one_instance_is_sent_by_the_next(
    tmp_path: Path, smtp_sink: SmtpSink, unreachable_port: int
) -> None:
    async with running(make_settings(tmp_path, unreachable_port)) as first:
        notification_id = (await first.post(**MAIL)).json()["id"]
    assert statuses(tmp_path / "outbox.sqlite3") == {"queued": 1}

    async with running(make_settings(tmp_path, smtp_sink.port)) as second:
        sent = await second.wait_for_status(notification_id, "sent")

    assert sent["attempts"] >= 1
    assert len(smtp_sink.to("ada@example.com")) == 1


async def test_mail_waits_while_the_server_is_down_and_goes_once_it_is_back(
    tmp_path: Path, unreachable_port: int
) -> None:
    async with running(make_settings(tmp_path, unreachable_port, MAX_ATTEMPTS=50)) as service:
        notification_id = (await service.post(**MAIL)).json()["id"]
        for _ in range(200):
            waiting = (await service.client.get(f"/v1/notifications/{notification_id}")).json()
            if waiting["attempts"] >= 2:
                break
            await asyncio.sleep(0.02)
        assert waiting["status"] in ("queued", "sending")
        assert "connect" in waiting["last_error"]

        sink = SmtpSink(port=unreachable_port).start()
        try:
            await service.wait_for_status(notification_id, "sent")
            assert len(sink.received) == 1
        finally:
            sink.stop()


async def second_mail_after_a_drop(tmp_path: Path, smtp_sink: SmtpSink, *, drop: str) -> dict[str, Any]:
    """Send one mail, so that the worker keeps its connection open; have the server hang up on the next mail
    at `drop` (a RecordingHandler counter); return that next mail's final status."""
    async with running(make_settings(tmp_path, smtp_sink.port, SEND_CONCURRENCY=1)) as service:
        first = (await service.post(**MAIL)).json()["id"]
        await service.wait_for_status(first, "sent")
        setattr(smtp_sink.handler, drop, 1)
        second = (await service.post(**MAIL)).json()["id"]
        return await service.wait_for_status(second, "sent")


async def test_a_dropped_kept_open_connection_is_reopened_without_costing_an_attempt(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Gone before anything of the mail was sent: a stale connection, not a failed delivery.
    sent = await second_mail_after_a_drop(tmp_path, smtp_sink, drop="drop_next_mail")

    assert sent["attempts"] == 1
    assert sent["last_error"] is None
    assert len(smtp_sink.received) == 2


async def test_a_kept_open_connection_dropped_after_data_began_costs_an_attempt_and_says_so(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Gone once the mail's content was on its way: the server may have it, so sending it again at once would
    # be a duplicate nobody sees. It is retried as a counted attempt instead.
    sent = await second_mail_after_a_drop(tmp_path, smtp_sink, drop="drop_next_data")

    assert sent["attempts"] == 2
    assert "the server may have the mail" in sent["last_error"]
    assert len(smtp_sink.received) == 2


async def test_a_connection_dropped_mid_session_is_retried(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.drop_next_data = 1
    async with running(make_settings(tmp_path, smtp_sink.port, SEND_CONCURRENCY=1)) as service:
        notification_id = (await service.post(**MAIL)).json()["id"]
        sent = await service.wait_for_status(notification_id, "sent")

    assert sent["attempts"] == 2
    assert len(smtp_sink.received) == 1


async def test_a_stalled_server_is_given_up_on_after_the_send_deadline(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.stall_next_data = 1
    smtp_sink.handler.stall_seconds = 60  # far past every deadline below, however slow the machine
    settings = make_settings(tmp_path, smtp_sink.port, SEND_CONCURRENCY=1, SEND_TIMEOUT_SECONDS=0.3)
    async with running(settings) as service:
        notification_id = (await service.post(**MAIL)).json()["id"]
        sent = await service.wait_for_status(notification_id, "sent")
        # The worker was freed by the deadline: the retry went out long before the stall would have ended.
        assert sent["attempts"] == 2
        assert "within 0.3s" in sent["last_error"]


async def test_shutdown_finishes_in_flight_sends_and_leaves_the_rest_queued(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    smtp_sink.handler.delay_seconds = 0.05
    settings = make_settings(tmp_path, smtp_sink.port)
    async with running(settings) as service:
        ids = [(await service.post(**MAIL)).json()["id"] for _ in range(40)]
        await service.wait_for_status(ids[0], "sending", "sent")
    left = statuses(settings.OUTBOX_PATH)
    assert "sending" not in left
    assert left["queued"] > 0
    assert left["queued"] + left.get("sent", 0) == 40
    assert len(smtp_sink.received) == left.get("sent", 0)
    smtp_sink.handler.delay_seconds = 0

    async with running(settings) as service:
        for notification_id in ids:
            await service.wait_for_status(notification_id, "sent")
    # Nothing was interrupted mid-send, so nothing was sent twice.
    assert len(smtp_sink.received) == 40


async def test_shutdown_past_the_grace_period_puts_interrupted_sends_back_in_the_queue(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    smtp_sink.handler.stall_next_data = 1
    smtp_sink.handler.stall_seconds = 60
    settings = make_settings(
        tmp_path, smtp_sink.port, SEND_CONCURRENCY=1, SEND_TIMEOUT_SECONDS=30, SHUTDOWN_GRACE_SECONDS=0.2
    )
    async with running(settings) as service:
        notification_id = (await service.post(**MAIL)).json()["id"]
        await service.wait_for_status(notification_id, "sending")

    assert statuses(settings.OUTBOX_PATH) == {"queued": 1}
    async with running(settings) as service:
        await service.wait_for_status(notification_id, "sent")


async def test_recipients_a_partly_sent_notification_never_reached_carry_the_servers_own_code(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Ada gets the mail and grey is greylisted; the retry for grey meets a full server (452 at DATA) and is the
    # last attempt. The notification is sent (Ada has it), and grey is listed with the server's code, as an int
    # the dispatcher was handed (it used to parse it back out of the reason, which starts "gave up after").
    smtp_sink.handler.refuse["grey@example.com"] = "451 4.7.1 greylisted"
    smtp_sink.handler.refuse_times["grey@example.com"] = 1
    smtp_sink.handler.data_replies.extend(["250 OK", "452 4.3.1 out of storage"])
    async with running(make_settings(tmp_path, smtp_sink.port, MAX_ATTEMPTS=2)) as service:
        response = await service.post(to=["ada@example.com", "grey@example.com"], subject="s", text="t")
        sent = await service.wait_for_status(response.json()["id"], "sent")

    assert sent["attempts"] == 2
    assert sent["refused_recipients"] == [
        {"address": "grey@example.com", "code": 452, "message": "gave up after 2 attempts: 452 4.3.1 out of storage"}
    ]


def test_settings_repr_hides_the_smtp_password(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, SMTP_USERNAME="user", SMTP_PASSWORD="hunter2-secret", OUTBOX_PATH=tmp_path / "o"
    )

    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in str(settings.model_dump())


async def test_an_unsendable_row_fails_alone_and_the_worker_goes_on(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    # A row the API would have refused (a line break in the subject), written to the outbox another way.
    async with running(make_settings(tmp_path, smtp_sink.port, SEND_CONCURRENCY=1)) as service:
        broken = Notification(
            id="broken-row",
            to=["ada@example.com"],
            subject="Hi\r\nBcc: victim@example.com",
            text="t",
            message_id="<broken-row@example.com>",
            created_at=time.time(),
        )
        await service.app.state.outbox.notifications.add([broken])
        service.app.state.dispatcher.wake()
        failed = await service.wait_for_status(broken.id, "failed")
        after = (await service.post(**MAIL)).json()["id"]
        await service.wait_for_status(after, "sent")

    assert failed["attempts"] == 1
    assert failed["last_error"].startswith("unsendable:")
    assert [r.rcpt_tos for r in smtp_sink.received] == [["ada@example.com"]]


async def test_a_claim_takes_several_rows_per_worker_and_one_that_waited_past_a_send_goes_back_unsent(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Every DATA waits until the test opens it: the one worker's sends run out of time one after the other.
    smtp_sink.handler.data_open.clear()
    settings = make_settings(tmp_path, smtp_sink.port, SEND_CONCURRENCY=1, SEND_TIMEOUT_SECONDS=0.5)
    async with running(settings) as service:
        store = service.app.state.dispatcher.outbox
        claimed: list[int] = []
        released: list[str] = []
        claim, release = store.claim, store.release

        async def counted_claim(limit: int, now: float) -> list[Notification]:
            rows: list[Notification] = await claim(limit, now)
            claimed.append(len(rows))
            return rows

        async def recorded_release(notification_ids: list[str]) -> None:
            released.extend(notification_ids)
            await release(notification_ids)

        store.claim, store.release = counted_claim, recorded_release
        first = (await service.post(**MAIL)).json()["id"]
        await service.wait_for_status(first, "sending")
        batch = await service.client.post("/v1/notifications/batch", json={"notifications": [MAIL] * 3})
        ids = [item["id"] for item in batch.json()["items"]]
        # The second waits one send (its claim is still young), the third two: it goes back instead of being sent
        # on a claim older than a send may last (on PostgreSQL, a lease that could run out mid-send).
        deadline = time.monotonic() + 10
        while ids[2] not in released:
            assert time.monotonic() < deadline, (claimed, released)
            await asyncio.sleep(0.02)
        smtp_sink.handler.data_open.set()
        done = [await service.wait_for_status(notification_id, "sent") for notification_id in [first, *ids]]

    assert max(claimed) == 3, claimed  # the whole batch in one claim, for one worker
    third = done[3]
    assert third["attempts"] == 1  # given back unsent: no attempt counted
    assert [entry["outcome"] for entry in third["history"]] == ["sent"]
