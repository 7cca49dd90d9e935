"""Resend's attachments by `path`: refused unless COMPAT_FETCH_ATTACHMENTS (SSRF), then only http(s), only public
hosts unless COMPAT_FETCH_ALLOW_PRIVATE, no redirects, at most MAX_ATTACHMENT_BYTES. A real HTTP server on
loopback serves the files."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Service, make_settings, running
from tests.http.compat.conftest import RESEND
from tests.http.compat.test_resend import MAIL, assert_resend_error, send
from tests.smtp_sink import SmtpSink

FILES = {"/report.pdf": b"%PDF-1.4 report", "/big.bin": b"x" * 5000}


class Files(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/report.pdf")
            self.end_headers()
            return
        body = FILES.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def files() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def fetching(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[Service]:
    settings = make_settings(
        tmp_path,
        smtp_sink.port,
        COMPAT_APIS="resend",
        COMPAT_FETCH_ATTACHMENTS=True,
        COMPAT_FETCH_ALLOW_PRIVATE=True,
        MAX_ATTACHMENT_BYTES=1000,
    )
    async with running(settings) as service:
        yield service


async def test_a_path_is_refused_by_default(compat: Service, files: str) -> None:
    response = await send(compat, {**MAIL, "attachments": [{"path": f"{files}/report.pdf"}]})
    assert_resend_error(response, 422, "invalid_attachment", "COMPAT_FETCH_ATTACHMENTS=false")


async def test_a_fetched_file_is_attached(fetching: Service, files: str, smtp_sink: SmtpSink) -> None:
    response = await send(
        fetching,
        {**MAIL, "attachments": [{"path": f"{files}/report.pdf"}, {"path": f"{files}/report.pdf", "filename": "b"}]},
    )
    assert response.status_code == 200, response.text
    [mail] = await smtp_sink.wait_for(1)
    parts = {part.get_filename(): part for part in mail.message.walk() if part.get_filename()}
    assert parts["report.pdf"].get_payload(decode=True) == FILES["/report.pdf"]
    assert parts["report.pdf"].get_content_type() == "application/pdf"
    assert parts["b"].get_payload(decode=True) == FILES["/report.pdf"]


async def test_what_cannot_be_fetched_is_refused(fetching: Service, files: str) -> None:
    for path, status, name, word in (
        (f"{files}/big.bin", 413, "validation_error", "MAX_ATTACHMENT_BYTES=1000"),
        (f"{files}/missing", 422, "invalid_attachment", "404"),
        (f"{files}/moved", 422, "invalid_attachment", "302"),
        ("file:///etc/passwd", 422, "invalid_attachment", "http(s)"),
        ("http://127.0.0.1:1/nothing-listens", 422, "invalid_attachment", "fetch failed"),
    ):
        response = await send(fetching, {**MAIL, "attachments": [{"path": path, "filename": "a.bin"}]})
        assert_resend_error(response, status, name, word)


async def test_a_private_address_is_refused_unless_allowed(tmp_path: Path, smtp_sink: SmtpSink, files: str) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, COMPAT_APIS="resend", COMPAT_FETCH_ATTACHMENTS=True)
    async with running(settings) as service:
        for url in (f"{files}/report.pdf", "http://localhost/x", "http://169.254.169.254/latest/meta-data"):
            response = await service.client.post(
                "/compat/resend/emails", json={**MAIL, "attachments": [{"path": url}]}, headers=RESEND
            )
            assert_resend_error(response, 422, "invalid_attachment", "COMPAT_FETCH_ALLOW_PRIVATE=false")
