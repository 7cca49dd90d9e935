"""The real thing: uvicorn in a subprocess, HTTP over a socket, a mail arriving at a real SMTP server."""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import ServiceProcess, service_env, start_service
from tests.smtp_sink import SmtpSink


@pytest.fixture
async def uvicorn_service(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[ServiceProcess]:
    service = await start_service(service_env(tmp_path / "outbox.sqlite3", smtp_sink.port), tmp_path / "uvicorn.log")
    try:
        yield service
    finally:
        service.stop()


async def test_a_mail_posted_over_http_arrives_and_the_process_stops_cleanly_on_sigterm(
    uvicorn_service: ServiceProcess, smtp_sink: SmtpSink
) -> None:
    async with httpx.AsyncClient(base_url=uvicorn_service.base_url) as client:
        response = await client.post(
            "/v1/notifications",
            json={"to": ["ada@example.com"], "subject": "Over the wire", "text": "hi"},
            headers={"X-Request-ID": "e2e-1"},
        )
        assert response.status_code == 202
        [mail] = await smtp_sink.wait_for(1)
        assert mail.message["Subject"] == "Over the wire"

    status = uvicorn_service.terminate(timeout=30)

    # uvicorn shuts down gracefully, then re-raises the signal it caught, so the exit status says SIGTERM.
    assert status in (0, -signal.SIGTERM)
    events = uvicorn_service.events()
    names = [e["event"] for e in events]
    assert "notification_sent" in names
    assert "service_stopped" in names
    # uvicorn's own records go through the same JSON pipeline.
    assert any(e.get("logger", "").startswith("uvicorn") for e in events)
    sent = next(e for e in events if e["event"] == "notification_sent")
    assert sent["request_id"] == "e2e-1"


async def test_an_attachment_of_eight_mib_goes_over_the_wire_and_out_of_the_dispatchers_process(
    uvicorn_service: ServiceProcess, smtp_sink: SmtpSink
) -> None:
    content = os.urandom(8 * 1024 * 1024)
    attachment = {"filename": "données.bin", "content_type": "application/octet-stream"}
    async with httpx.AsyncClient(base_url=uvicorn_service.base_url, timeout=30) as client:
        response = await client.post(
            "/v1/notifications",
            json={
                "to": ["ada@example.com"],
                "subject": "Big",
                "text": "attached",
                "attachments": [{**attachment, "content": base64.b64encode(content).decode()}],
            },
        )
        assert response.status_code == 202, response.text
        [mail] = await smtp_sink.wait_for(1, timeout=30)

    [received] = mail.message.iter_attachments()
    assert (received.get_filename(), received.get_content()) == ("données.bin", content)


async def test_the_service_runs_outside_the_checkout_so_a_developers_env_file_is_not_read(
    uvicorn_service: ServiceProcess, tmp_path: Path
) -> None:
    # Settings reads `.env` from the working directory: one in the checkout (API_KEYS, OUTBOX_URL) would
    # change what every end-to-end test sees on a developer's machine and never in CI.
    assert Path(f"/proc/{uvicorn_service.process.pid}/cwd").resolve() == tmp_path.resolve()
    async with httpx.AsyncClient(base_url=uvicorn_service.base_url) as client:
        templates = (await client.get("/v1/templates")).json()
    assert templates, "the templates are found from there too"
