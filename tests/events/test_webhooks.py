"""Webhooks through the real app, to a real HTTP receiver that checks every signature with the standardwebhooks
library's own verifier: the events, their retries, giving up, the deliveries' routes, and mail that never waits."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from tests.conftest import MAIL, Service, make_settings, running
from tests.http.test_jobs import upload, wait_for_job
from tests.smtp_sink import SmtpSink, free_port
from tests.webhook_receiver import SECRET, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def webhook_settings(tmp_path: Path, smtp_sink: SmtpSink, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "WEBHOOK_URLS": url,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_RETRY_BASE_SECONDS": 0.05,
        "WEBHOOK_RETRY_MAX_SECONDS": 0.2,
        "WEBHOOK_TIMEOUT_SECONDS": 2,
    }
    return make_settings(tmp_path, smtp_sink.port, **{**values, **overrides})


@pytest.fixture
async def service(tmp_path: Path, smtp_sink: SmtpSink, receiver: Receiver) -> AsyncIterator[Service]:
    async with running(webhook_settings(tmp_path, smtp_sink, receiver.url)) as started:
        yield started


async def deliveries(service: Service, **params: Any) -> list[dict[str, Any]]:
    response = await service.client.get("/v1/webhooks/deliveries", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def wait_for_deliveries(service: Service, status: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(found := await deliveries(service, status=status)) < count:
        assert time.monotonic() < deadline, (
            f"{len(found)} deliveries {status}, want {count}: {await deliveries(service)}"
        )
        await asyncio.sleep(0.05)
    return found


async def test_sent_and_failed_events_arrive_signed_with_the_status_object(
    service: Service, smtp_sink: SmtpSink, receiver: Receiver
) -> None:
    smtp_sink.handler.refuse["gone@example.com"] = "550 5.1.1 <gone@example.com>: no such user"
    sent_id = (await service.post(**MAIL)).json()["id"]
    failed_id = (await service.post(**{**MAIL, "to": ["gone@example.com"]})).json()["id"]

    [sent] = await receiver.wait_for("notification.sent", id=sent_id)
    [failed] = await receiver.wait_for("notification.failed", id=failed_id)

    # The data is the status object exactly as GET /v1/notifications/{id} shows it now (nothing moved since).
    assert sent["data"] == (await service.client.get(f"/v1/notifications/{sent_id}")).json()
    assert sent["data"]["smtp_reply"].startswith("250")
    assert sent["timestamp"].endswith("Z")
    assert failed["data"]["status"] == "failed"
    assert failed["data"]["last_error"]
    assert [r["address"] for r in failed["data"]["refused_recipients"]] == ["gone@example.com"]
    # Every request verified with the library; one webhook-id per event, which is the delivery's event id.
    assert all(request.event is not None for request in receiver.requests)
    listed = {d["event_id"]: d for d in await deliveries(service)}
    assert {r.event_id for r in receiver.requests} == set(listed)
    assert all(d["status"] == "delivered" and d["response_code"] == 200 for d in listed.values())


async def test_a_transient_failure_sends_delayed_once_then_sent(
    service: Service, smtp_sink: SmtpSink, receiver: Receiver
) -> None:
    smtp_sink.handler.refuse["grey@example.com"] = "451 4.7.1 greylisted, try again later"
    smtp_sink.handler.refuse_times["grey@example.com"] = 3
    notification_id = (await service.post(**{**MAIL, "to": ["grey@example.com"]})).json()["id"]

    await receiver.wait_for("notification.sent", id=notification_id)
    await service.wait_for_status(notification_id, "sent")
    [delayed] = receiver.events("notification.delayed")
    assert delayed["data"]["id"] == notification_id
    assert delayed["data"]["status"] == "queued"
    assert delayed["data"]["attempts"] == 1
    assert "451" in delayed["data"]["last_error"]
    # Three retries, one delayed event: the same count once the last delivery is done.
    await wait_for_deliveries(service, "delivered", 2)
    assert len(receiver.events("notification.delayed")) == 1


async def test_a_canceled_notification_sends_canceled_with_its_status_object(
    service: Service, receiver: Receiver
) -> None:
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    notification_id = (await service.post(**MAIL, send_at=later)).json()["id"]
    canceled = await service.client.post(f"/v1/notifications/{notification_id}/cancel")
    assert canceled.status_code == 200, canceled.text

    [event] = await receiver.wait_for("notification.canceled", id=notification_id)
    assert event["data"] == canceled.json()
    assert event["data"]["status"] == "canceled"
    # Refused, a second cancel changes nothing and sends nothing.
    assert (await service.client.post(f"/v1/notifications/{notification_id}/cancel")).status_code == 409
    await wait_for_deliveries(service, "delivered", 1)
    assert len(receiver.events("notification.canceled")) == 1


async def test_a_finished_csv_job_sends_job_finished_with_its_counts(
    service: Service, smtp_sink: SmtpSink, receiver: Receiver
) -> None:
    csv_body = (
        b"email,first_name,login_url\nada@example.com,Ada,https://example.com/a\n"
        b"not-an-address,Bob,https://example.com/b\ngrace@example.com,Grace,https://example.com/g\n"
    )
    job_id = (await upload(service, csv_body)).json()["id"]
    await wait_for_job(service, job_id, "done")

    [finished] = await receiver.wait_for("job.finished", id=job_id)
    assert finished["data"]["status"] == "done"
    assert (finished["data"]["accepted"], finished["data"]["rejected"]) == (2, 1)
    assert [e["row"] for e in finished["data"]["errors"]] == [3]


async def test_deliveries_are_retried_while_the_receiver_fails_and_then_arrive_once(
    service: Service, receiver: Receiver
) -> None:
    receiver.replies.extend([500, 503, 502])
    notification_id = (await service.post(**MAIL)).json()["id"]

    [sent] = await receiver.wait_for("notification.sent", id=notification_id)
    [delivery] = await wait_for_deliveries(service, "delivered", 1)
    assert delivery["attempts"] == 4
    assert delivery["last_error"].startswith("HTTP 502")
    # Every attempt carried the same webhook-id, each with a fresh signature that verified.
    ids = [r.event_id for r in receiver.requests]
    assert ids == [delivery["event_id"]] * 4
    assert all(r.event == sent for r in receiver.requests)


async def test_a_receiver_that_refuses_connections_gets_the_event_once_it_listens(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    async with running(webhook_settings(tmp_path, smtp_sink, f"http://127.0.0.1:{port}/hooks")) as service:
        notification_id = (await service.post(**MAIL)).json()["id"]
        deadline = time.monotonic() + 15
        while not any(d["attempts"] >= 1 and d["last_error"] for d in await deliveries(service)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        [waiting] = await deliveries(service)
        assert "Connect" in waiting["last_error"]
        receiver = Receiver(port=port).start()
        try:
            await receiver.wait_for("notification.sent", id=notification_id)
        finally:
            receiver.stop()


async def test_a_delivery_is_given_up_after_max_attempts_listed_and_sent_again_by_retry(
    tmp_path: Path, smtp_sink: SmtpSink, receiver: Receiver
) -> None:
    receiver.status = 500
    settings = webhook_settings(tmp_path, smtp_sink, receiver.url, WEBHOOK_MAX_ATTEMPTS=3)
    async with running(settings) as service:
        notification_id = (await service.post(**MAIL)).json()["id"]
        [failed] = await wait_for_deliveries(service, "failed", 1)
        assert failed["attempts"] == 3
        assert failed["last_error"].startswith("HTTP 500")
        assert failed["event_type"] == "notification.sent"
        assert failed["url"] == receiver.url
        assert len(receiver.requests) == 3
        metrics = (await service.client.get("/metrics")).text
        assert 'webhook_deliveries_total{result="failed"} 1.0' in metrics
        assert 'webhook_deliveries_total{result="retry"} 2.0' in metrics

        receiver.status = 200
        retried = await service.client.post(f"/v1/webhooks/deliveries/{failed['id']}/retry")
        assert retried.status_code == 202, retried.text
        assert retried.json()["status"] == "pending"
        assert retried.json()["attempts"] == 0
        again = await receiver.wait_for("notification.sent", count=4, id=notification_id)
        assert len({e["data"]["id"] for e in again}) == 1
        [delivered] = await wait_for_deliveries(service, "delivered", 1)
        assert delivered["id"] == failed["id"]
        assert await deliveries(service, status="failed") == []

        unknown = await service.client.post("/v1/webhooks/deliveries/dlv_nope/retry")
        assert unknown.status_code == 404
        assert "detail" in unknown.json()


async def test_a_pending_delivery_cannot_be_retried(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    # Nobody listens: the delivery stays pending between attempts.
    settings = webhook_settings(
        tmp_path,
        smtp_sink,
        f"http://127.0.0.1:{free_port()}/",
        WEBHOOK_RETRY_BASE_SECONDS=60,
        WEBHOOK_RETRY_MAX_SECONDS=60,
    )
    async with running(settings) as service:
        await service.post(**MAIL)
        [pending] = await wait_for_deliveries(service, "pending", 1)
        conflict = await service.client.post(f"/v1/webhooks/deliveries/{pending['id']}/retry")
        assert conflict.status_code == 409
        assert "pending" in conflict.json()["detail"]


async def test_mail_keeps_flowing_while_the_receiver_stalls(
    tmp_path: Path, smtp_sink: SmtpSink, receiver: Receiver
) -> None:
    receiver.hang.clear()
    settings = webhook_settings(
        tmp_path, smtp_sink, receiver.url, WEBHOOK_TIMEOUT_SECONDS=60, WEBHOOK_CONCURRENCY=2, SEND_CONCURRENCY=2
    )
    async with running(settings) as service:
        ids = [(await service.post(**{**MAIL, "subject": f"mail {n}"})).json()["id"] for n in range(30)]
        # Every mail reaches the SMTP server while the receiver holds the only two requests it was sent.
        await smtp_sink.wait_for(30, timeout=30)
        for notification_id in ids:
            await service.wait_for_status(notification_id, "sent")
        assert receiver.waiting <= 2
        waiting = [d for d in await deliveries(service, limit=100) if d["status"] in ("pending", "sending")]
        assert len(waiting) == 30
        # Let go: every event then arrives.
        receiver.hang.set()
        await receiver.wait_for("notification.sent", count=30, timeout=30)
        assert {e["data"]["id"] for e in receiver.events("notification.sent")} == set(ids)


async def test_without_webhook_urls_no_event_is_written(service_without: Service) -> None:
    notification_id = (await service_without.post(**MAIL)).json()["id"]
    await service_without.wait_for_status(notification_id, "sent")
    assert await deliveries(service_without) == []


@pytest.fixture
async def service_without(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[Service]:
    async with running(make_settings(tmp_path, smtp_sink.port)) as started:
        yield started


async def test_on_postgresql_events_are_written_and_delivered_the_same_way(
    tmp_path: Path, smtp_sink: SmtpSink, receiver: Receiver, postgres_url: str
) -> None:
    smtp_sink.handler.refuse["gone@example.com"] = "550 5.1.1 <gone@example.com>: no such user"
    receiver.replies.extend([500])
    settings = webhook_settings(tmp_path, smtp_sink, receiver.url, OUTBOX_URL=postgres_url)
    async with running(settings) as service:
        sent_id = (await service.post(**MAIL)).json()["id"]
        failed_id = (await service.post(**{**MAIL, "to": ["gone@example.com"]})).json()["id"]
        await receiver.wait_for("notification.sent", id=sent_id)
        [failed] = await receiver.wait_for("notification.failed", id=failed_id)
        assert failed["data"]["refused_recipients"][0]["address"] == "gone@example.com"
        delivered = await wait_for_deliveries(service, "delivered", 2)
        assert sorted(d["attempts"] for d in delivered) == [1, 2]


async def test_a_shutdown_gives_back_a_delivery_cut_short_due_at_once(
    tmp_path: Path, smtp_sink: SmtpSink, receiver: Receiver
) -> None:
    receiver.hang.clear()
    settings = webhook_settings(tmp_path, smtp_sink, receiver.url, WEBHOOK_TIMEOUT_SECONDS=60, WEBHOOK_CONCURRENCY=1)
    async with running(settings) as service:
        await service.post(**MAIL)
        deadline = time.monotonic() + 15
        while receiver.waiting < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    # Stopped after SHUTDOWN_GRACE_SECONDS with the request still hanging: back to pending, not left sending.
    with sqlite3.connect(settings.OUTBOX_PATH) as db:
        rows = db.execute("SELECT status, attempts, last_error, next_attempt_at FROM webhook_deliveries").fetchall()
    [(status, attempts, last_error, due)] = rows
    assert (status, attempts, last_error) == ("pending", 1, "interrupted by shutdown")
    assert due <= time.time()


async def test_stop_returns_even_when_a_wake_lands_just_as_it_is_called(
    tmp_path: Path, smtp_sink: SmtpSink, receiver: Receiver
) -> None:
    # A delivery that ends wakes the sender's loop; a stop in the same instant once lost its cancel in
    # asyncio.wait_for (Python 3.11 returns the finished wait instead of raising) and the shutdown hung for good.
    # Every small gap between the wake and the stop is tried, so one of them lands in that window.
    for ticks in range(6):
        async with running(webhook_settings(tmp_path / str(ticks), smtp_sink, receiver.url)) as service:
            sender = service.app.state.webhook_sender
            await asyncio.sleep(0.05)  # the loop is waiting for a wake, with nothing due
            sender.wake()
            for _ in range(ticks):
                await asyncio.sleep(0)
            stopping = asyncio.create_task(sender.stop())
            done, _ = await asyncio.wait([stopping], timeout=10)
            assert done, f"stop() still waiting 10 s after a wake {ticks} ticks before it"
