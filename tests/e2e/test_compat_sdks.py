"""The vendors' own SDKs against the service: Resend's (`resend`) and Postmark's (`postmark-python`) from PyPI,
over real HTTP to uvicorn in a subprocess, only their base URL changed; every mail read back at the SMTP sink."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import postmark
import postmark.exceptions
import pytest
import resend
import resend.exceptions

from tests.e2e.processes import ROOT, ServiceProcess, service_env, start_service
from tests.smtp_sink import SmtpSink

KEY = "re_compat-e2e-key-0123456789"


@pytest.fixture
async def compat_service(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[ServiceProcess]:
    env = service_env(tmp_path / "outbox.sqlite3", smtp_sink.port, COMPAT_APIS="resend,postmark", API_KEYS=KEY)
    service = await start_service(env, tmp_path / "uvicorn.log")
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def resend_sdk(compat_service: ServiceProcess, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Resend's module, pointed at us: the two lines an app changes (or RESEND_API_URL in its environment)."""
    monkeypatch.setattr(resend, "api_key", KEY)
    monkeypatch.setattr(resend, "api_url", f"{compat_service.base_url}/compat/resend")
    return resend


@pytest.fixture
async def postmark_client(compat_service: ServiceProcess) -> AsyncIterator[postmark.ServerClient]:
    client = postmark.ServerClient(KEY, retries=0, base_url=f"{compat_service.base_url}/compat/postmark")
    try:
        yield client
    finally:
        await client.close()


async def call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Resend's SDK blocks: off the event loop, which the SMTP sink's test side shares."""
    return await asyncio.to_thread(function, *args, **kwargs)


async def test_resend_sends_with_attachments_cc_and_bcc(resend_sdk: Any, smtp_sink: SmtpSink) -> None:
    sent = await call(
        resend_sdk.Emails.send,
        {
            "from": "Acme <hello@example.com>",
            "to": ["ada@example.com"],
            "cc": ["carol@example.com"],
            "bcc": "dave@example.com",
            "subject": "Invoice",
            "html": '<p>Attached <img src="cid:logo"></p>',
            "text": "Attached",
            "headers": {"X-Entity-Ref-ID": "42"},
            "attachments": [
                {"filename": "invoice.pdf", "content": list(b"%PDF-1.4 invoice")},
                {"filename": "logo.png", "content": base64.b64encode(b"png").decode(), "content_id": "logo"},
            ],
            "tags": [{"name": "category", "value": "invoice"}],
        },
        {"idempotency_key": "invoice-42"},
    )
    [mail] = await smtp_sink.wait_for(1)
    assert set(mail.rcpt_tos) == {"ada@example.com", "carol@example.com", "dave@example.com"}
    message = mail.message
    assert (message["Subject"], message["Cc"], message["Bcc"]) == ("Invoice", "carol@example.com", None)
    assert (message["From"], mail.mail_from) == ("Acme <hello@example.com>", "hello@example.com")
    assert message["X-Entity-Ref-ID"] == "42"
    parts = {part.get_filename(): part for part in message.walk() if part.get_filename()}
    assert parts["invoice.pdf"].get_payload(decode=True) == b"%PDF-1.4 invoice"
    assert parts["invoice.pdf"].get_content_type() == "application/pdf"
    assert parts["logo.png"]["Content-ID"] == "<logo>"

    email = await call(resend_sdk.Emails.get, sent["id"])
    assert (email["object"], email["id"], email["subject"]) == ("email", sent["id"], "Invoice")
    assert email["tags"] == [{"name": "category", "value": "invoice"}]
    deadline = asyncio.get_running_loop().time() + 10
    while email["last_event"] != "sent":
        assert asyncio.get_running_loop().time() < deadline, email
        await asyncio.sleep(0.05)
        email = await call(resend_sdk.Emails.get, sent["id"])

    # The same Idempotency-Key with another e-mail: refused, the SDK raising its own error.
    with pytest.raises(resend.exceptions.ResendError) as reused:
        await call(
            resend_sdk.Emails.send,
            {"from": "Acme <hello@example.com>", "to": ["ada@example.com"], "subject": "Invoice", "text": "x"},
            {"idempotency_key": "invoice-42"},
        )
    assert (reused.value.code, reused.value.error_type) == (409, "invalid_idempotent_request")
    assert len(smtp_sink.received) == 1


async def test_resend_batch_schedule_reschedule_and_cancel(resend_sdk: Any, smtp_sink: SmtpSink) -> None:
    batch = await call(
        resend_sdk.Batch.send,
        [
            {"from": "hello@example.com", "to": ["ada@example.com"], "subject": "One", "text": "1"},
            {"from": "hello@example.com", "to": ["bob@example.com"], "subject": "Two", "text": "2"},
        ],
    )
    assert len(batch["data"]) == 2
    mails = await smtp_sink.wait_for(2)
    assert sorted(m.message["Subject"] for m in mails) == ["One", "Two"]

    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    kept = await call(
        resend_sdk.Emails.send,
        {
            "from": "hello@example.com",
            "to": ["ada@example.com"],
            "subject": "Later",
            "text": "l",
            "scheduled_at": later,
        },
    )
    dropped = await call(
        resend_sdk.Emails.send,
        {
            "from": "hello@example.com",
            "to": ["ada@example.com"],
            "subject": "Never",
            "text": "n",
            "scheduled_at": later,
        },
    )
    assert (await call(resend_sdk.Emails.get, kept["id"]))["last_event"] == "scheduled"
    canceled = await call(resend_sdk.Emails.cancel, dropped["id"])
    assert canceled["id"] == dropped["id"]
    assert (await call(resend_sdk.Emails.get, dropped["id"]))["last_event"] == "canceled"

    # Rescheduled to now: it goes at once (the dispatcher, in its own process, is woken).
    updated = await call(resend_sdk.Emails.update, {"id": kept["id"], "scheduled_at": datetime.now(UTC).isoformat()})
    assert updated["id"] == kept["id"]
    mails = await smtp_sink.wait_for(3)
    assert [m.message["Subject"] for m in mails][2] == "Later"
    assert "Never" not in [m.message["Subject"] for m in smtp_sink.received]


async def test_resend_bad_input_and_a_wrong_key_raise_the_sdks_own_errors(
    resend_sdk: Any, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(resend.exceptions.ValidationError) as invalid:
        await call(resend_sdk.Emails.send, {"from": "hello@example.com", "to": ["nobody"], "subject": "x", "text": "x"})
    assert invalid.value.code == 422
    assert "to[0]" in invalid.value.message

    monkeypatch.setattr(resend, "api_key", "re_wrong-key-0123456789")
    with pytest.raises(resend.exceptions.InvalidApiKeyError):
        await call(
            resend_sdk.Emails.send,
            {"from": "hello@example.com", "to": ["ada@example.com"], "subject": "x", "text": "x"},
        )
    assert smtp_sink.received == []


async def test_postmark_sends_with_attachments_cc_bcc_and_a_batch(
    postmark_client: postmark.ServerClient, smtp_sink: SmtpSink
) -> None:
    answer = await postmark_client.outbound.send(
        {
            "From": "Acme <hello@example.com>",
            "To": "ada@example.com",
            "Cc": "carol@example.com",
            "Bcc": "dave@example.com",
            "Subject": "Receipt",
            "TextBody": "Thanks",
            "HtmlBody": "<p>Thanks</p>",
            "Tag": "receipt",
            "Metadata": {"order": "42"},
            "MessageStream": "outbound",
            "Headers": [{"Name": "X-Order", "Value": "42"}],
            "Attachments": [
                {"Name": "receipt.txt", "Content": base64.b64encode(b"receipt").decode(), "ContentType": "text/plain"}
            ],
        }
    )
    assert (answer.success, answer.to) == (True, "ada@example.com")
    [mail] = await smtp_sink.wait_for(1)
    assert set(mail.rcpt_tos) == {"ada@example.com", "carol@example.com", "dave@example.com"}
    assert (mail.message["Subject"], mail.message["X-Order"]) == ("Receipt", "42")
    parts = {part.get_filename(): part for part in mail.message.walk() if part.get_filename()}
    assert parts["receipt.txt"].get_payload(decode=True) == b"receipt"

    results = await postmark_client.outbound.send_batch(
        [
            {"From": "hello@example.com", "To": "bob@example.com", "Subject": "B1", "TextBody": "1"},
            {"From": "hello@example.com", "To": "nobody", "Subject": "B2", "TextBody": "2"},
        ]
    )
    assert [r.success for r in results] == [True, False]
    assert results[1].error_code == 300
    mails = await smtp_sink.wait_for(2)
    assert mails[1].message["Subject"] == "B1"


async def test_postmark_template_send(postmark_client: postmark.ServerClient, smtp_sink: SmtpSink) -> None:
    answer = await postmark_client.outbound.send_with_template(
        {
            "From": "hello@example.com",
            "To": "ada@example.com",
            "TemplateAlias": "welcome",
            "TemplateModel": {"first_name": "Ada", "email": "ada@example.com", "login_url": "https://example.com"},
        }
    )
    assert answer.success
    [mail] = await smtp_sink.wait_for(1)
    assert mail.message["Subject"] == "Welcome to Example, Ada!"


async def test_postmark_bad_input_and_a_wrong_token_raise_the_sdks_own_errors(
    compat_service: ServiceProcess, postmark_client: postmark.ServerClient, smtp_sink: SmtpSink
) -> None:
    with pytest.raises(postmark.exceptions.ValidationException) as invalid:
        await postmark_client.outbound.send(
            {"From": "hello@example.com", "To": "nobody", "Subject": "x", "TextBody": "x"}
        )
    assert (invalid.value.error_code, invalid.value.http_status) == (300, 422)

    with pytest.raises(postmark.exceptions.ValidationException) as unknown:
        await postmark_client.outbound.send_with_template(
            {"From": "hello@example.com", "To": "ada@example.com", "TemplateAlias": "nope"}
        )
    assert unknown.value.error_code == 1101

    wrong = postmark.ServerClient("wrong-token", retries=0, base_url=f"{compat_service.base_url}/compat/postmark")
    try:
        with pytest.raises(postmark.exceptions.InvalidAPIKeyException) as refused:
            await wrong.outbound.send(
                {"From": "hello@example.com", "To": "ada@example.com", "Subject": "x", "TextBody": "x"}
            )
        assert refused.value.error_code == 10
    finally:
        await wrong.close()
    assert smtp_sink.received == []


def readme_snippets() -> list[str]:
    """The README's two snippets, as written: the section's ```python blocks."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Resend and Postmark SDKs", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


async def test_the_readmes_snippets_send_as_written(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    snippets = readme_snippets()
    assert len(snippets) == 2
    # As the compose stack runs: both APIs on, API_KEYS empty.
    env = service_env(tmp_path / "outbox.sqlite3", smtp_sink.port, COMPAT_APIS="resend,postmark")
    service = await start_service(env, tmp_path / "uvicorn.log")
    try:
        for snippet in snippets:
            assert "http://localhost:8000/compat/" in snippet
            code = snippet.replace("http://localhost:8000", service.base_url)
            ran = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
            )
            assert ran.returncode == 0, ran.stderr
        mails = await smtp_sink.wait_for(2)
    finally:
        service.stop()
    assert [m.rcpt_tos for m in mails] == [["ada@example.com"], ["ada@example.com"]]
