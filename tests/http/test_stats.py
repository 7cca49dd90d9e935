"""`/v1/stats`: the queue at a glance, from the outbox."""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path

from tests.conftest import MAIL, Service, make_settings, running
from tests.http.test_metrics import wait_for_metric
from tests.smtp_sink import SmtpSink


async def test_stats_of_an_empty_outbox(service: Service) -> None:
    response = await service.client.get("/v1/stats")

    assert response.status_code == 200
    body = response.json()
    assert body["counts"] == {"queued": 0, "sending": 0, "sent": 0, "failed": 0, "scheduled": 0, "canceled": 0}
    assert body["oldest_queued_age_seconds"] is None
    assert len(body["sent_per_minute"]) == 15
    assert all(bucket["sent"] == 0 for bucket in body["sent_per_minute"])
    assert body["recent_errors"] == []


async def test_stats_count_sent_and_failed_mail_and_name_the_errors(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.append("550 5.7.1 rejected by policy")
    failing = await service.client.post("/v1/notifications", json=MAIL, headers={"X-Request-ID": "req-bad"})
    await service.wait_for_status(failing.json()["id"], "failed")
    sent = [(await service.post(**MAIL)).json()["id"] for _ in range(2)]
    for notification_id in sent:
        await service.wait_for_status(notification_id, "sent")

    body = (await service.client.get("/v1/stats", params={"minutes": 5, "errors": 3})).json()

    assert body["counts"] == {"queued": 0, "sending": 0, "sent": 2, "failed": 1, "scheduled": 0, "canceled": 0}
    minutes = [datetime.fromisoformat(bucket["minute"]) for bucket in body["sent_per_minute"]]
    assert len(minutes) == 5
    assert minutes == sorted(minutes)
    assert all(later.timestamp() - earlier.timestamp() == 60 for earlier, later in itertools.pairwise(minutes))
    assert sum(bucket["sent"] for bucket in body["sent_per_minute"]) == 2
    [error] = body["recent_errors"]
    assert error["id"] == failing.json()["id"]
    assert error["status"] == "failed"
    assert error["error"] == "550 5.7.1 rejected by policy"
    assert error["request_id"] == "req-bad"
    assert error["attempts"] == 1


async def test_stats_show_how_long_the_oldest_mail_waits(tmp_path: Path, unreachable_port: int) -> None:
    settings = make_settings(tmp_path, unreachable_port, RETRY_BASE_SECONDS=60, RETRY_MAX_SECONDS=60)
    async with running(settings) as service:
        response = await service.post(**MAIL)
        await wait_for_metric(service, "notification_send_attempts_total", 1, result="transient_error")
        await service.wait_for_status(response.json()["id"], "queued")

        body = (await service.client.get("/v1/stats")).json()

    assert body["counts"]["queued"] == 1
    assert body["oldest_queued_age_seconds"] > 0
    [error] = body["recent_errors"]
    assert error["status"] == "queued"
    assert error["error"].startswith("connect to 127.0.0.1")


async def test_stats_parameters_are_bounded(service: Service) -> None:
    assert (await service.client.get("/v1/stats", params={"minutes": 0})).status_code == 422
    assert (await service.client.get("/v1/stats", params={"minutes": 61})).status_code == 422
    assert (await service.client.get("/v1/stats", params={"errors": 101})).status_code == 422
