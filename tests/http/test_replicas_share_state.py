"""Two replicas of the app on one PostgreSQL database: an Idempotency-Key, the stats and the metrics' outbox
gauges are the database's, so both replicas answer the same."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.conftest import MAIL, make_settings, running
from tests.http.test_metrics import scrape, value
from tests.smtp_sink import SmtpSink


async def test_a_retry_on_another_replica_replays_the_first_answer_and_both_report_the_same_queue(
    tmp_path: Path, smtp_sink: SmtpSink, postgres_url: str
) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, OUTBOX_URL=postgres_url)
    async with running(settings) as first, running(settings) as second:
        headers = {"Idempotency-Key": "order-42"}
        accepted = await first.client.post("/v1/notifications", json=MAIL, headers=headers)
        retried = await second.client.post("/v1/notifications", json=MAIL, headers=headers)
        other = await second.client.post("/v1/notifications", json={**MAIL, "subject": "x"}, headers=headers)
        await first.wait_for_status(accepted.json()["id"], "sent")

        deadline = time.monotonic() + 10
        while (await second.client.get("/v1/stats")).json()["counts"]["sent"] < 1:
            assert time.monotonic() < deadline, "the sent mail never showed in the other replica's stats"
            await asyncio.sleep(0.02)
        stats = [(await service.client.get("/v1/stats")).json() for service in (first, second)]
        gauges = [value(await scrape(service), "outbox_notifications", status="sent") for service in (first, second)]

    assert accepted.status_code == retried.status_code == 202
    assert retried.json() == accepted.json()
    assert retried.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422
    assert len(smtp_sink.received) == 1
    assert (
        stats[0]["counts"]
        == stats[1]["counts"]
        == {"queued": 0, "sending": 0, "sent": 1, "failed": 0, "scheduled": 0, "canceled": 0}
    )
    assert gauges == [1.0, 1.0]
