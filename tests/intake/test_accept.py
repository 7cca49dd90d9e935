"""Intake, the one way in: a notification that comes in alone, in a batch, through the tutorial's two routes or
from a CSV job is stored, counted, logged and handed to the dispatcher the same way; nothing else in the service
writes a new notification."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from service.delivery import dispatcher
from tests.conftest import MAIL, captured_events, make_settings, running
from tests.http.test_jobs import upload, wait_for_job
from tests.http.test_metrics import scrape, value
from tests.jobs_csv import good_addresses, people_csv
from tests.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[2]


async def test_every_way_in_is_stored_counted_logged_and_wakes_the_dispatcher(
    tmp_path: Path, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No safety-net poll: a way in that did not wake the dispatcher leaves its mail unsent, and the wait fails.
    monkeypatch.setattr(dispatcher, "POLL_SECONDS", 3600.0)
    rows = 40
    settings = make_settings(tmp_path, smtp_sink.port, JOB_MAX_QUEUED=0, JOBS_DIR=tmp_path / "jobs")
    async with running(settings) as service:
        with captured_events() as events:
            assert (await service.post(**MAIL)).status_code == 202
            await smtp_sink.wait_for(1, timeout=30)

            batch = {"notifications": [MAIL, {**MAIL, "to": ["grace@example.com"]}, {**MAIL, "to": []}]}
            assert (await service.client.post("/v1/notifications/batch", json=batch)).status_code == 202
            await smtp_sink.wait_for(3, timeout=30)

            assert (await service.client.post("/send-notification/linus@example.com")).status_code == 200
            await smtp_sink.wait_for(4, timeout=30)
            assert (await service.client.post("/email/margaret@example.com")).status_code == 200
            await smtp_sink.wait_for(5, timeout=30)

            job = (await upload(service, people_csv(rows))).json()
            done = await wait_for_job(service, job["id"], "done", "failed")
            assert done["status"] == "done", done
            await smtp_sink.wait_for(5 + len(good_addresses(rows)), timeout=30)

        samples = await scrape(service)
    assert value(samples, "notifications_accepted_total") == 5 + len(good_addresses(rows))

    def accepted(event: dict[str, Any]) -> bool:
        return bool(event["event"] == "notification_accepted")

    # One line per notification for the single, batch and tutorial ways; a CSV job logs per chunk instead.
    assert [e.get("batch", False) for e in events if accepted(e)] == [False, True, True, False, False]
    assert all(e["recipients"] == 1 and e["notification_id"] for e in events if accepted(e))
    [batch_line] = [e for e in events if e["event"] == "batch_accepted"]
    assert (batch_line["accepted"], batch_line["rejected"]) == (2, 1)


def _stored_by(path: Path) -> list[str]:
    """The outbox and job-store writes of new notifications (`<outbox or store>.add(...)`, `.add_chunk(...)`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = ast.unparse(node.func.value)
            if node.func.attr in {"add", "add_chunk"} and any(w in receiver for w in ("outbox", "store", "jobs")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {receiver}.{node.func.attr}")
    return found


def test_nothing_but_intake_writes_a_new_notification() -> None:
    writers = [
        line
        for path in sorted((ROOT / "service").rglob("*.py"))
        if "outbox" not in path.relative_to(ROOT / "service").parts
        for line in _stored_by(path)
    ]
    assert writers, "the check found no write at all: it no longer sees intake's"
    assert {line.split(":")[0] for line in writers} == {"service/intake/accept.py"}, writers
