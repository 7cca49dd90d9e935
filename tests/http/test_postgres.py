"""The whole app on a PostgreSQL outbox: the routes and the dispatcher cannot tell which store they use."""

from __future__ import annotations

from pathlib import Path

from service.outbox import describe_outbox
from service.outbox.postgres.database import PostgresDatabase
from tests.conftest import MAIL, make_settings, running
from tests.postgres import latest_migration
from tests.smtp_sink import SmtpSink


async def test_the_service_on_postgresql_accepts_delivers_and_reports_its_schema(
    tmp_path: Path, smtp_sink: SmtpSink, postgres_url: str
) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, OUTBOX_URL=postgres_url.replace("postgres@", "postgres:pw@"))
    async with running(settings) as service:
        assert isinstance(service.app.state.outbox.database, PostgresDatabase)
        accepted = await service.post(**MAIL)
        sent = await service.wait_for_status(accepted.json()["id"], "sent")
        ready = await service.client.get("/health/ready")
        listed = await service.client.get("/v1/notifications", params={"status": "sent"})

    [mail] = await smtp_sink.wait_for(1)
    assert accepted.status_code == 202
    assert (sent["attempts"], sent["smtp_reply"]) == (1, "250 Message accepted for delivery")
    assert mail.message["Message-ID"] == sent["message_id"]
    assert ready.json() == {
        "status": "pass",
        "checks": {"outbox": "pass", "smtp": "pass", "dispatcher": "pass"},
        "schema_version": latest_migration("postgres"),
        "details": {
            "outbox": {"reason": None},
            "smtp": {"reason": None, "error": None, "tls": "none", "verify_certs": True, "warnings": []},
            "dispatcher": {"reason": None},
        },
    }
    assert [n["id"] for n in listed.json()["items"]] == [sent["id"]]
    # The database URL is logged (service_started) without its password.
    assert describe_outbox(settings).startswith("postgresql://postgres:***@127.0.0.1:5432/nsvc_test_")
