"""Scheduled send and cancel through the real app and a real SMTP sink: `send_at` keeps a notification `scheduled`
until then, `POST …/cancel` stops it, and every way in (single, batch, CSV job) takes a send_at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MAIL, Service, make_settings, running
from tests.http.test_jobs import upload, wait_for_job
from tests.http.test_metrics import scrape, value
from tests.smtp_sink import SmtpSink


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def in_seconds(seconds: float) -> str:
    return rfc3339(datetime.now(UTC) + timedelta(seconds=seconds))


def parsed(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def messages(response: Any) -> str:
    return " | ".join(error["msg"] for error in response.json()["detail"])


async def test_a_scheduled_notification_reaches_the_sink_at_its_send_at_not_before(
    service: Service, smtp_sink: SmtpSink
) -> None:
    send_at = datetime.now(UTC) + timedelta(seconds=2)

    accepted = await service.post(**MAIL, send_at=send_at.astimezone(timezone(timedelta(hours=2))).isoformat())

    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["status"] == "scheduled"
    assert parsed(body["send_at"]) == parsed(body["next_attempt_at"])
    assert abs((parsed(body["send_at"]) - send_at).total_seconds()) < 0.001
    [mail] = await smtp_sink.wait_for(1, timeout=15)
    sent = await service.wait_for_status(body["id"], "sent")
    assert mail.message["Message-ID"] == sent["message_id"]
    # It went at its time: the server took it after send_at, on the first attempt.
    assert parsed(sent["sent_at"]) >= send_at
    assert sent["attempts"] == 1


@pytest.mark.parametrize(
    ("send_at", "words"),
    [
        ("2030-01-01T09:00:00", "needs an offset, e.g. Z or +02:00"),
        (1893488400, "RFC 3339"),
        ("next tuesday", "datetime"),
    ],
)
async def test_a_send_at_without_an_offset_or_not_a_time_is_a_422(service: Service, send_at: Any, words: str) -> None:
    response = await service.post(**MAIL, send_at=send_at)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "send_at"]
    assert words in messages(response)
    assert (await service.client.get("/v1/notifications")).json()["items"] == []


async def test_a_template_request_keeps_its_send_at(service: Service) -> None:
    send_at = in_seconds(3600)
    response = await service.post(
        to=["ada@example.com"],
        template="welcome",
        data={"first_name": "Ada", "email": "ada@example.com", "login_url": "https://example.com/login"},
        send_at=send_at,
    )

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "scheduled"
    assert abs((parsed(response.json()["send_at"]) - parsed(send_at)).total_seconds()) < 0.001


async def test_a_send_at_past_max_schedule_days_is_a_422(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, MAX_SCHEDULE_DAYS=2)
    async with running(settings) as service:
        too_far = await service.post(**MAIL, send_at=in_seconds(2 * 86400 + 60))
        within = await service.post(**MAIL, send_at=in_seconds(2 * 86400 - 60))

    assert too_far.status_code == 422
    assert too_far.json()["detail"][0]["loc"] == ["body", "send_at"]
    assert "MAX_SCHEDULE_DAYS=2" in messages(too_far)
    assert within.status_code == 202
    assert within.json()["status"] == "scheduled"


async def test_a_send_at_in_the_past_sends_at_once(service: Service, smtp_sink: SmtpSink) -> None:
    accepted = await service.post(**MAIL, send_at="2020-01-01T00:00:00+02:00")

    assert accepted.status_code == 202
    assert (accepted.json()["status"], accepted.json()["send_at"]) == ("queued", None)
    await smtp_sink.wait_for(1)
    await service.wait_for_status(accepted.json()["id"], "sent")


async def test_cancel_stops_a_scheduled_notification_and_answers_409_once_it_cannot(
    service: Service, smtp_sink: SmtpSink
) -> None:
    later = (await service.post(**MAIL, send_at=in_seconds(3600))).json()
    now = (await service.post(**{**MAIL, "to": ["grace@example.com"]})).json()
    await service.wait_for_status(now["id"], "sent")

    canceled = await service.client.post(f"/v1/notifications/{later['id']}/cancel")
    again = await service.client.post(f"/v1/notifications/{later['id']}/cancel")
    too_late = await service.client.post(f"/v1/notifications/{now['id']}/cancel")
    unknown = await service.client.post("/v1/notifications/no-such-id/cancel")
    stored = (await service.client.get(f"/v1/notifications/{later['id']}")).json()

    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    assert [h["outcome"] for h in canceled.json()["history"]] == ["canceled"]
    assert stored["status"] == "canceled"
    assert again.status_code == 409
    assert "is canceled" in again.json()["detail"]
    assert too_late.status_code == 409
    assert "is sent" in too_late.json()["detail"]
    assert unknown.status_code == 404
    assert [m.rcpt_tos for m in smtp_sink.received] == [["grace@example.com"]]


async def test_a_canceled_notification_is_never_sent(service: Service, smtp_sink: SmtpSink) -> None:
    doomed = (await service.post(**MAIL, send_at=in_seconds(1.5))).json()
    assert (await service.client.post(f"/v1/notifications/{doomed['id']}/cancel")).status_code == 200
    # A later one to the same sink: once it has arrived, the dispatcher has been past the canceled one's time.
    after = (await service.post(**{**MAIL, "to": ["grace@example.com"]}, send_at=in_seconds(2))).json()

    [mail] = await smtp_sink.wait_for(1, timeout=15)
    await service.wait_for_status(after["id"], "sent")

    assert mail.rcpt_tos == ["grace@example.com"]
    assert (await service.client.get(f"/v1/notifications/{doomed['id']}")).json()["status"] == "canceled"


async def test_scheduled_and_canceled_show_in_listing_stats_and_metrics(service: Service) -> None:
    waiting = (await service.post(**MAIL, send_at=in_seconds(3600))).json()
    stopped = (await service.post(**MAIL, send_at=in_seconds(3600))).json()
    await service.client.post(f"/v1/notifications/{stopped['id']}/cancel")

    scheduled = (await service.client.get("/v1/notifications", params={"status": "scheduled"})).json()
    canceled = (await service.client.get("/v1/notifications", params={"status": "canceled"})).json()
    counts = (await service.client.get("/v1/stats")).json()["counts"]
    samples = await scrape(service)

    assert [n["id"] for n in scheduled["items"]] == [waiting["id"]]
    assert [n["id"] for n in canceled["items"]] == [stopped["id"]]
    assert (counts["scheduled"], counts["canceled"], counts["queued"]) == (1, 1, 0)
    assert value(samples, "outbox_notifications", status="scheduled") == 1
    assert value(samples, "outbox_notifications", status="canceled") == 1


async def test_scheduled_mail_is_accepted_when_the_queue_is_full(tmp_path: Path, unreachable_port: int) -> None:
    # No SMTP server and retries far away: the one queued notification stays unsent and fills the queue.
    settings = make_settings(tmp_path, unreachable_port, QUEUE_LIMIT=1, RETRY_BASE_SECONDS=60, RETRY_MAX_SECONDS=60)
    async with running(settings) as service:
        first = await service.post(**MAIL)
        full = await service.post(**MAIL)
        later = [await service.post(**MAIL, send_at=in_seconds(3600)) for _ in range(3)]

    assert first.status_code == 202
    assert full.status_code == 429
    assert [(r.status_code, r.json()["status"]) for r in later] == [(202, "scheduled")] * 3


async def test_a_batch_takes_a_send_at_for_all_and_one_per_item(service: Service) -> None:
    own = in_seconds(7200)
    response = await service.client.post(
        "/v1/notifications/batch",
        json={
            "send_at": in_seconds(3600),
            "notifications": [MAIL, {**MAIL, "send_at": own}, {**MAIL, "send_at": "2030-01-01T09:00:00"}],
        },
    )

    assert response.status_code == 202, response.text
    first, second, refused = response.json()["items"]
    assert (first["status"], second["status"]) == ("scheduled", "scheduled")
    assert "needs an offset" in refused["error"]["detail"][0]["msg"]
    one = (await service.client.get(f"/v1/notifications/{first['id']}")).json()
    two = (await service.client.get(f"/v1/notifications/{second['id']}")).json()
    assert abs((parsed(two["send_at"]) - parsed(own)).total_seconds()) < 0.001
    assert parsed(one["send_at"]) < parsed(two["send_at"])


async def test_a_csv_job_schedules_every_row_for_its_send_at(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, JOBS_DIR=tmp_path / "jobs", JOB_MAX_QUEUED=1)
    content = b"email,first_name,login_url\na@example.com,Ada,https://x\nb@example.com,Grace,https://x\nc@example.com,Alan,https://x\n"
    send_at = in_seconds(3600)
    async with running(settings) as service:
        bad = await service.client.post(
            "/v1/jobs",
            files={"file": ("people.csv", content, "text/csv")},
            data={"template": "welcome", "send_at": "2030-01-01 09:00"},
        )
        response = await service.client.post(
            "/v1/jobs",
            files={"file": ("people.csv", content, "text/csv")},
            data={"template": "welcome", "send_at": send_at},
        )
        assert response.status_code == 202, response.text
        # Not held back by JOB_MAX_QUEUED=1: nothing of it waits in the queue yet.
        done = await wait_for_job(service, response.json()["id"], "done", "failed")
        listed = (await service.client.get("/v1/notifications", params={"status": "scheduled"})).json()["items"]

    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "send_at"]
    assert (done["status"], done["accepted"], done["scheduled"], done["queued"]) == ("done", 3, 3, 0)
    assert parsed(done["send_at"]) == parsed(send_at)
    assert len(listed) == 3
    assert {n["send_at"] for n in listed} == {done["send_at"]}
    assert smtp_sink.received == []


async def test_a_job_without_send_at_is_unchanged(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, JOBS_DIR=tmp_path / "jobs")
    async with running(settings) as service:
        response = await upload(service, b"email,first_name,login_url\nada@example.com,Ada,https://x\n")
        done = await wait_for_job(service, response.json()["id"], "done")
    assert (done["send_at"], done["scheduled"]) == (None, 0)
    await smtp_sink.wait_for(1)


async def test_on_postgresql_a_scheduled_notification_is_sent_at_its_time(
    tmp_path: Path, smtp_sink: SmtpSink, postgres_url: str
) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, OUTBOX_URL=postgres_url)
    send_at = datetime.now(UTC) + timedelta(seconds=1.5)
    async with running(settings) as service:
        accepted = (await service.post(**MAIL, send_at=rfc3339(send_at))).json()
        assert accepted["status"] == "scheduled"
        [mail] = await smtp_sink.wait_for(1, timeout=15)
        sent = await service.wait_for_status(accepted["id"], "sent")
    assert parsed(sent["sent_at"]) >= send_at
    assert mail.message["Message-ID"] == sent["message_id"]


@pytest.mark.slow
async def test_the_dispatchers_own_process_wakes_for_a_scheduled_notification(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, DISPATCHER_PROCESS=True)
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    async with running(settings) as service:
        accepted = (await service.post(**MAIL, send_at=rfc3339(send_at))).json()
        [mail] = await smtp_sink.wait_for(1, timeout=20)
        sent = await service.wait_for_status(accepted["id"], "sent")
    assert parsed(sent["sent_at"]) >= send_at
    assert mail.message["Message-ID"] == sent["message_id"]
