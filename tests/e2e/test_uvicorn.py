"""The real thing: uvicorn in a subprocess, HTTP over a socket, a mail arriving at a real SMTP server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.smtp_sink import SmtpSink, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def uvicorn_service(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = {
        **os.environ,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_sink.port),
        "OUTBOX_PATH": str(tmp_path / "outbox.sqlite3"),
        "LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{base_url}/health/live", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"uvicorn did not start:\n{process.communicate()[0]}")
        time.sleep(0.05)
    try:
        yield base_url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def test_a_mail_posted_over_http_arrives_and_the_process_stops_cleanly_on_sigterm(
    uvicorn_service: tuple[str, subprocess.Popen[str]], smtp_sink: SmtpSink
) -> None:
    base_url, process = uvicorn_service
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post(
            "/v1/notifications",
            json={"to": ["ada@example.com"], "subject": "Over the wire", "text": "hi"},
            headers={"X-Request-ID": "e2e-1"},
        )
        assert response.status_code == 202
        [mail] = await smtp_sink.wait_for(1)
        assert mail.message["Subject"] == "Over the wire"

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)

    # uvicorn shuts down gracefully, then re-raises the signal it caught, so the exit status says SIGTERM.
    assert process.returncode in (0, -signal.SIGTERM)
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "notification_sent" in names
    assert "service_stopped" in names
    # uvicorn's own records go through the same JSON pipeline.
    assert any(e.get("logger", "").startswith("uvicorn") for e in events)
    sent = next(e for e in events if e["event"] == "notification_sent")
    assert sent["request_id"] == "e2e-1"
