"""One request id follows a notification through its whole life: the status object and every log event,
whether the mail is sent at once, retried, or fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import MAIL, Service, captured_events, make_settings, running, wait_for_event
from tests.smtp_sink import SmtpSink


def events_of(events: list[dict[str, Any]], notification_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("notification_id") == notification_id]


async def test_a_retried_notification_keeps_its_request_id(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.append("451 4.3.0 try again later")

    with captured_events() as events:
        response = await service.client.post("/v1/notifications", json=MAIL, headers={"X-Request-ID": "req-retry"})
        notification_id = response.json()["id"]
        sent = await service.wait_for_status(notification_id, "sent")
        await wait_for_event(events, "notification_sent", notification_id=notification_id)

    assert sent["request_id"] == "req-retry"
    mine = events_of(events, notification_id)
    assert [e["event"] for e in mine] == [
        "notification_accepted",
        "notification_sending",
        "notification_retry_scheduled",
        "notification_sending",
        "notification_sent",
    ]
    assert {e.get("request_id") for e in mine} == {"req-retry"}


async def test_a_failed_notification_keeps_its_request_id(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.append("550 5.7.1 rejected by policy")

    with captured_events() as events:
        response = await service.client.post("/v1/notifications", json=MAIL, headers={"X-Request-ID": "req-fail"})
        notification_id = response.json()["id"]
        failed = await service.wait_for_status(notification_id, "failed")
        await wait_for_event(events, "notification_failed", notification_id=notification_id)

    assert failed["request_id"] == "req-fail"
    mine = events_of(events, notification_id)
    assert [e["event"] for e in mine] == ["notification_accepted", "notification_sending", "notification_failed"]
    assert {e.get("request_id") for e in mine} == {"req-fail"}


async def test_giving_up_after_max_attempts_keeps_the_request_id(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.extend(["452 4.3.1 out of storage"] * 2)

    async with running(make_settings(tmp_path, smtp_sink.port, MAX_ATTEMPTS=2)) as service:
        with captured_events() as events:
            response = await service.client.post("/v1/notifications", json=MAIL, headers={"X-Request-ID": "req-tired"})
            notification_id = response.json()["id"]
            await service.wait_for_status(notification_id, "failed")
            await wait_for_event(events, "notification_failed", notification_id=notification_id)

    mine = events_of(events, notification_id)
    assert [e["event"] for e in mine][-1] == "notification_failed"
    assert "notification_retry_scheduled" in [e["event"] for e in mine]
    assert {e.get("request_id") for e in mine} == {"req-tired"}


async def test_a_requeue_names_both_request_ids(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.append("550 5.7.1 rejected by policy")
    response = await service.client.post("/v1/notifications", json=MAIL, headers={"X-Request-ID": "req-first"})
    notification_id = response.json()["id"]
    await service.wait_for_status(notification_id, "failed")

    with captured_events() as events:
        retried = await service.client.post(
            f"/v1/notifications/{notification_id}/retry", headers={"X-Request-ID": "req-again"}
        )
        await service.wait_for_status(notification_id, "sent")
        await wait_for_event(events, "notification_sent", notification_id=notification_id)

    # The status object keeps the id of the request that created the notification.
    assert retried.json()["request_id"] == "req-first"
    [requeued] = [e for e in events if e["event"] == "notification_requeued"]
    assert requeued["request_id"] == "req-again"
    assert requeued["original_request_id"] == "req-first"
    later = [e for e in events_of(events, notification_id) if e["event"] != "notification_requeued"]
    assert [e["event"] for e in later] == ["notification_sending", "notification_sent"]
    assert {e.get("request_id") for e in later} == {"req-first"}
