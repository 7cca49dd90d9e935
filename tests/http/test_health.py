"""Liveness and readiness, with the SMTP server up, down, and the outbox locked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import MAIL, Service, make_settings, running
from tests.postgres import latest_migration
from tests.smtp_sink import SmtpSink

LATEST_SQLITE_MIGRATION = latest_migration("sqlite")
PLAIN_SMTP = {"tls": "none", "verify_certs": True, "warnings": []}


async def test_live_answers_while_the_process_serves(service: Service) -> None:
    response = await service.client.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "pass"}


async def test_ready_passes_with_smtp_and_outbox_working(service: Service) -> None:
    response = await service.client.get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {
        "status": "pass",
        "checks": {"outbox": "pass", "smtp": "pass", "dispatcher": "pass"},
        "schema_version": LATEST_SQLITE_MIGRATION,
        "details": {
            "outbox": {"reason": None},
            "smtp": {"reason": None, "error": None, **PLAIN_SMTP},
            "dispatcher": {"reason": None},
        },
    }


async def test_ready_warns_while_smtp_is_unreachable_and_mail_is_still_accepted(
    tmp_path: Path, unreachable_port: int
) -> None:
    async with running(make_settings(tmp_path, unreachable_port)) as service:
        response = await service.client.get("/health/ready")
        accepted = await service.client.post(
            "/v1/notifications", json={"to": ["a@example.com"], "subject": "s", "text": "t"}
        )

    assert response.status_code == 200
    body = response.json()
    smtp = body["details"]["smtp"]
    assert body == {
        "status": "warn",
        "checks": {"outbox": "pass", "smtp": "fail", "dispatcher": "pass"},
        "schema_version": LATEST_SQLITE_MIGRATION,
        "details": {
            "outbox": {"reason": None},
            "smtp": {"reason": "unreachable", "error": smtp["error"], **PLAIN_SMTP},
            "dispatcher": {"reason": None},
        },
    }
    assert f"127.0.0.1:{unreachable_port}" in smtp["error"]
    assert accepted.status_code == 202


async def test_ready_fails_with_503_when_the_outbox_cannot_be_written(service: Service, tmp_path: Path) -> None:
    blocker = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        response = await service.client.get("/health/ready")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert response.status_code == 503
    assert response.json()["status"] == "fail"
    assert response.json()["checks"]["outbox"] == "fail"
    assert response.json()["details"]["outbox"]["reason"].startswith("cannot be written: ")


@pytest.mark.parametrize("own_process", [False, True], ids=["in-process", "own-process"])
async def test_ready_warns_while_the_dispatcher_is_not_running(
    tmp_path: Path, smtp_sink: SmtpSink, own_process: bool
) -> None:
    async with running(make_settings(tmp_path, smtp_sink.port, DISPATCHER_PROCESS=own_process)) as service:
        await service.app.state.dispatcher.stop()
        response = await service.client.get("/health/ready")
        accepted = await service.post(**MAIL)

    assert response.status_code == 200
    assert response.json()["status"] == "warn"
    assert response.json()["checks"] == {"outbox": "pass", "smtp": "pass", "dispatcher": "fail"}
    assert response.json()["details"]["dispatcher"]["reason"].startswith("not running")
    assert accepted.status_code == 202
