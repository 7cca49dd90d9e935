"""The outbox on a full disk (a tmpfs filled to the last byte): nothing is falsely accepted, readiness says so at
once, and a mail the server took is recorded `sent` once space comes back, never sent twice."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from tests.conftest import MAIL, Service, captured_events, make_settings, running, wait_for_event
from tests.small_disk import SmallDisk, small_disk
from tests.smtp_sink import SmtpSink


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_disk(tmp_path) as mounted:
        yield mounted


def on_disk(disk: SmallDisk, smtp_sink: SmtpSink, **overrides: Any) -> Settings:
    return make_settings(
        disk.path, smtp_sink.port, OUTBOX_PATH=disk.path / "outbox.sqlite3", JOBS_DIR=disk.path / "jobs", **overrides
    )


def assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert "outbox cannot be written" in response.json()["detail"]
    assert int(response.headers["Retry-After"]) > 0


async def readiness(service: Service) -> tuple[int, dict[str, Any]]:
    response = await service.client.get("/health/ready")
    return response.status_code, response.json()


async def wait_until_ready(service: Service, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = await readiness(service)
        if code == 200:
            return body
        assert time.monotonic() < deadline, f"readiness stayed {body}"
        await asyncio.sleep(0.05)


async def test_on_a_full_disk_every_accept_answers_503_and_readiness_fails_until_there_is_room(
    disk: SmallDisk, smtp_sink: SmtpSink
) -> None:
    settings = on_disk(disk, smtp_sink)
    async with running(settings) as service:
        before = await service.post(**MAIL)
        assert before.status_code == 202
        await service.wait_for_status(before.json()["id"], "sent")
        disk.fill(settings.OUTBOX_PATH)

        assert_unavailable(await service.post(**MAIL))
        assert_unavailable(await service.client.post("/v1/notifications/batch", json={"notifications": [MAIL] * 3}))
        assert_unavailable(await service.client.post("/send-notification/ada@example.com"))
        assert_unavailable(
            await service.client.post(
                "/v1/jobs",
                files={"file": ("people.csv", b"email\nada@example.com\n", "text/csv")},
                data={"template": "welcome"},
            )
        )
        listed = (await service.client.get("/v1/notifications")).json()["items"]
        assert [n["id"] for n in listed] == [before.json()["id"]], "nothing may be stored behind a 503"

        code, body = await readiness(service)
        assert (code, body["status"], body["checks"]["outbox"]) == (503, "fail", "fail")
        assert "full" in body["details"]["outbox"]["reason"]

        # Room for a heartbeat but not for a notification: readiness still fails, as the last write did.
        disk.free(64 * 1024)
        code, body = await readiness(service)
        assert (code, body["checks"]["outbox"]) == (503, "fail")
        assert "a write failed" in body["details"]["outbox"]["reason"]

        disk.free()
        body = await wait_until_ready(service)
        assert body["checks"]["outbox"] == "pass"
        after = await service.post(**MAIL)
        assert after.status_code == 202
        await service.wait_for_status(after.json()["id"], "sent")


async def test_a_mail_the_server_took_on_a_full_disk_is_recorded_sent_once_there_is_room_and_never_sent_again(
    disk: SmallDisk, smtp_sink: SmtpSink
) -> None:
    settings = on_disk(disk, smtp_sink)
    hold = threading.Event()
    smtp_sink.handler.hold = hold
    try:
        async with running(settings) as service:
            with captured_events() as events:
                accepted = await service.post(**MAIL)
                notification_id = accepted.json()["id"]
                await service.wait_for_status(notification_id, "sending")
                while smtp_sink.handler.held == 0:
                    await asyncio.sleep(0.01)
                # The server has the mail's bytes; the disk fills before it answers 250.
                disk.fill(settings.OUTBOX_PATH)
                hold.set()
                await smtp_sink.wait_for(1)
                await wait_for_event(events, "outbox_write_failed", kept=True)

                # Kept in memory, the row still this claim's: not claimed again, not sent again.
                assert (await service.client.get(f"/v1/notifications/{notification_id}")).json()["status"] == "sending"
                code, body = await readiness(service)
                assert (code, body["checks"]["outbox"]) == (503, "fail")
                metrics = (await service.client.get("/metrics")).text
                assert "outcomes_unwritten 1.0" in metrics

                disk.free()
                sent = await service.wait_for_status(notification_id, "sent", timeout=15)
                assert [entry["outcome"] for entry in sent["history"]] == ["sent"]
                await wait_for_event(events, "outcomes_written", count=1)
                await wait_until_ready(service)

        async with running(settings) as service:
            # After a restart: the first mail is not sent again; a new one goes out, so the dispatcher did run.
            second = await service.post(**MAIL)
            await service.wait_for_status(second.json()["id"], "sent")
            assert (await service.client.get(f"/v1/notifications/{notification_id}")).json()["status"] == "sent"
        assert len(smtp_sink.received) == 2
    finally:
        hold.set()


async def test_an_outcome_still_unwritable_at_shutdown_is_tried_once_more_and_logged(
    disk: SmallDisk, smtp_sink: SmtpSink
) -> None:
    settings = on_disk(disk, smtp_sink)
    hold = threading.Event()
    smtp_sink.handler.hold = hold
    try:
        lifespan = running(settings)
        service = await lifespan.__aenter__()
        # Captured once the app has set up its logging (create_app), through its shutdown.
        with captured_events() as events:
            try:
                accepted = await service.post(**MAIL)
                notification_id = accepted.json()["id"]
                while smtp_sink.handler.held == 0:
                    await asyncio.sleep(0.01)
                disk.fill(settings.OUTBOX_PATH)
                hold.set()
                await wait_for_event(events, "outbox_write_failed", kept=True)
            finally:
                # Stopped on the still-full disk.
                await lifespan.__aexit__(None, None, None)
            unwritten = await wait_for_event(events, "outcomes_unwritten")
            assert unwritten["notification_ids"] == [notification_id]
    finally:
        hold.set()
    # The honest consequence, documented: left `sending`, it is sent again after the next start.
    disk.free()
    smtp_sink.handler.hold = None
    async with running(settings) as service:
        again = await service.wait_for_status(notification_id, "sent")
        assert [entry["outcome"] for entry in again["history"]] == ["recovered", "sent"]
    assert len(smtp_sink.received) == 2


async def test_a_hard_bounce_kept_with_its_unwritten_outcome_is_written_with_it_once_there_is_room(
    disk: SmallDisk, smtp_sink: SmtpSink
) -> None:
    # The kept write is the whole outcome: its history entry and its bounce land together, later.
    gone = "gone@example.com"
    smtp_sink.handler.refuse[gone] = "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown"
    settings = on_disk(disk, smtp_sink)
    hold = threading.Event()
    smtp_sink.handler.hold = hold
    try:
        async with running(settings) as service:
            with captured_events() as events:
                accepted = await service.post(**{**MAIL, "to": ["ada@example.com", gone]})
                notification_id = accepted.json()["id"]
                while smtp_sink.handler.held == 0:
                    await asyncio.sleep(0.01)
                disk.fill(settings.OUTBOX_PATH)
                hold.set()
                await smtp_sink.wait_for(1)
                await wait_for_event(events, "outbox_write_failed", kept=True)
                assert (await service.client.get("/v1/suppressions")).json()["items"] == []

                disk.free()
                sent = await service.wait_for_status(notification_id, "sent", timeout=15)
                assert [entry["outcome"] for entry in sent["history"]] == ["sent"]
                assert [r["address"] for r in sent["refused_recipients"]] == [gone]
                listed = (await service.client.get("/v1/suppressions")).json()["items"]
                assert [(s["address"], s["source"], s["suppressing"], s["notification_id"]) for s in listed] == [
                    (gone, "hard_bounce", True, notification_id)
                ]
    finally:
        hold.set()
