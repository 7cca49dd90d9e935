"""Attachments through the real app, the outbox and a real SMTP server: read back at the sink with the email
parser (filename, type and bytes as sent), inline images in their multipart/related, every refusal naming its field."""

from __future__ import annotations

import base64
import os
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from service.intake.attachments import decoded_size
from tests.conftest import Service, make_settings, running
from tests.smtp_sink import SmtpSink

PDF = b"%PDF-1.7\n" + os.urandom(20_000) + b"\r\n\x00\xff"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(700)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def invoice(**overrides: Any) -> dict[str, Any]:
    return {"filename": "facture été 2026.pdf", "content_type": "application/pdf", "content": b64(PDF), **overrides}


LOGO = {"filename": "logo.png", "content_type": "image/png", "content": b64(PNG), "content_id": "logo"}
MAIL = {"to": ["ada@example.com"], "subject": "Your invoice", "text": "See the PDF.", "html": '<img src="cid:logo">'}


def tree(part: EmailMessage) -> Any:
    """The MIME structure as nested (type, [children]) tuples."""
    if part.is_multipart():
        return (part.get_content_type(), [tree(child) for child in part.iter_parts()])  # type: ignore[arg-type]
    return part.get_content_type()


async def test_attachments_arrive_as_sent_with_an_inline_image_beside_the_html(
    service: Service, smtp_sink: SmtpSink
) -> None:
    response = await service.post(**MAIL, attachments=[invoice(), LOGO])

    assert response.status_code == 202, response.text
    echoed = [
        {"filename": "facture été 2026.pdf", "content_type": "application/pdf", "content_id": None, "size": len(PDF)},
        {"filename": "logo.png", "content_type": "image/png", "content_id": "logo", "size": len(PNG)},
    ]
    assert response.json()["attachments"] == echoed
    sent = await service.wait_for_status(response.json()["id"], "sent")
    assert sent["attachments"] == echoed

    [mail] = await smtp_sink.wait_for(1)
    message = mail.message
    # A multipart/related inside the multipart/alternative, all inside the multipart/mixed of the attachment.
    assert tree(message) == (
        "multipart/mixed",
        [
            ("multipart/alternative", ["text/plain", ("multipart/related", ["text/html", "image/png"])]),
            "application/pdf",
        ],
    )
    [attachment] = message.iter_attachments()
    assert attachment.get_filename() == "facture été 2026.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF
    # The non-ASCII name goes out per RFC 2231, not as an encoded word.
    assert "filename*=utf-8''facture%20%C3%A9t%C3%A9%202026.pdf" in mail.data.decode()
    related = message.get_payload()[0].get_payload()[1]  # type: ignore[index,union-attr]
    html, image = related.iter_parts()
    assert html.get_content().strip() == '<img src="cid:logo">'
    assert image["Content-ID"] == "<logo>"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == PNG


async def test_attachments_go_out_from_the_dispatchers_own_process(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, DISPATCHER_PROCESS=True, DISPATCHER_NICE=0)
    async with running(settings) as service:
        response = await service.post(to=["ada@example.com"], subject="Hi", text="x", attachments=[invoice()])
        assert response.status_code == 202, response.text
        await service.wait_for_status(response.json()["id"], "sent")

    [attachment] = smtp_sink.received[0].message.iter_attachments()
    assert attachment.get_content() == PDF


async def test_an_inline_image_without_html_goes_out_as_an_attachment(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.post(to=["ada@example.com"], subject="Logo", text="attached", attachments=[LOGO])

    await service.wait_for_status(response.json()["id"], "sent")
    message = smtp_sink.received[0].message
    assert tree(message) == ("multipart/mixed", ["text/plain", "image/png"])
    [image] = message.iter_attachments()
    assert (image.get_filename(), image["Content-ID"], image.get_content()) == ("logo.png", "<logo>", PNG)


async def test_a_batch_and_a_template_carry_attachments(service: Service, smtp_sink: SmtpSink) -> None:
    welcome = {
        "to": ["grace@example.com"],
        "template": "welcome",
        "data": {"first_name": "Grace", "email": "grace@example.com", "login_url": "https://example.com"},
        "attachments": [invoice(filename="terms.pdf")],
    }
    batch = await service.client.post(
        "/v1/notifications/batch",
        json={
            "notifications": [
                {**MAIL, "attachments": [LOGO]},
                welcome,
                {**MAIL, "attachments": [{**LOGO, "content": "!"}]},
            ]
        },
    )

    assert batch.status_code == 202, batch.text
    first, second, refused = batch.json()["items"]
    assert refused["error"]["detail"][0]["loc"] == ["body", "attachments", 0, "content"]
    for item in (first, second):
        await service.wait_for_status(item["id"], "sent")
    by_subject = {mail.message["Subject"]: mail.message for mail in smtp_sink.received}
    [terms] = by_subject["Welcome to Example, Grace!"].iter_attachments()
    assert (terms.get_filename(), terms.get_content()) == ("terms.pdf", PDF)
    assert tree(by_subject["Your invoice"])[1][1] == ("multipart/related", ["text/html", "image/png"])


@pytest.mark.parametrize(
    ("attachment", "field"),
    [
        (invoice(filename="../etc/passwd"), "filename"),
        (invoice(filename="C:\\boot.ini"), "filename"),
        (invoice(filename="a\r\nBcc: x@example.com"), "filename"),
        (invoice(filename="tab\there.pdf"), "filename"),
        (invoice(filename=""), "filename"),
        (invoice(filename="x" * 252 + ".pdf"), "filename"),
        (invoice(filename='say "hi".pdf'), "filename"),
        (invoice(filename="=?utf-8?q?evil?=.pdf"), "filename"),
        (invoice(filename=" padded.pdf"), "filename"),
        (invoice(filename=".."), "filename"),
        (invoice(content="not base64!"), "content"),
        (invoice(content="YWJj\nZGVm"), "content"),
        (invoice(content="YWJ"), "content"),
        (invoice(content_type="pdf"), "content_type"),
        (invoice(content_type="text/plain; charset=utf-8"), "content_type"),
        (invoice(content_type="multipart/mixed"), "content_type"),
        (invoice(content_type="message/rfc822"), "content_type"),
        (invoice(content_id="a b"), "content_id"),
        (invoice(content_id="<logo"), "content_id"),
        (invoice(content_id="x\r\nBcc: y"), "content_id"),
        ({"filename": "a.pdf", "content_type": "application/pdf"}, "content"),
        (invoice(size=3), "size"),
    ],
)
async def test_a_bad_attachment_is_a_422_naming_its_field(
    service: Service, smtp_sink: SmtpSink, attachment: dict[str, Any], field: str
) -> None:
    response = await service.post(**MAIL, attachments=[LOGO, attachment])

    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "attachments", 1, field]]


async def test_a_content_id_given_twice_is_a_422(service: Service) -> None:
    response = await service.post(**MAIL, attachments=[LOGO, {**LOGO, "filename": "other.png"}])

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "attachments", 1, "content_id"]


async def test_more_than_max_attachments_is_a_422(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    async with running(make_settings(tmp_path, smtp_sink.port, MAX_ATTACHMENTS=2)) as service:
        two = await service.post(**MAIL, attachments=[invoice(), LOGO])
        three = await service.post(**MAIL, attachments=[invoice(), LOGO, invoice(filename="b.pdf")])

    assert two.status_code == 202
    assert three.status_code == 422
    [error] = three.json()["detail"]
    assert error["loc"] == ["body", "attachments"]
    assert "MAX_ATTACHMENTS=2" in error["msg"]


async def test_attachments_over_max_attachment_bytes_are_a_413_before_any_is_decoded(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    limit = len(PDF) + len(PNG)
    async with running(make_settings(tmp_path, smtp_sink.port, MAX_ATTACHMENT_BYTES=limit)) as service:
        exactly = await service.post(**MAIL, attachments=[invoice(), LOGO])
        one_more = await service.post(**MAIL, attachments=[invoice(), {**LOGO, "content": b64(PNG + b"!")}])
        # Not base64 at all, and too large: the size is refused first, from the length alone.
        garbage = await service.post(**MAIL, attachments=[{**LOGO, "content": "*" * (limit * 4 // 3 + 8)}])
        batch = await service.client.post(
            "/v1/notifications/batch", json={"notifications": [{**MAIL, "attachments": [invoice(), invoice()]}]}
        )

    assert exactly.status_code == 202, exactly.text
    for response in (one_more, garbage):
        assert response.status_code == 413
        assert f"MAX_ATTACHMENT_BYTES={limit}" in response.json()["detail"]
    # In a batch, the item alone is refused, saying why.
    [item] = batch.json()["items"]
    assert item["error"]["detail"][0]["loc"] == ["body", "attachments"]
    assert "MAX_ATTACHMENT_BYTES" in item["error"]["detail"][0]["msg"]


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 100, 1001])
def test_the_decoded_size_is_known_from_the_length_alone(size: int) -> None:
    assert decoded_size(b64(os.urandom(size))) == size


async def test_ten_mib_of_attachments_fit_in_the_default_body_limit(service: Service, smtp_sink: SmtpSink) -> None:
    big = os.urandom(10 * 1024 * 1024 - 64)
    response = await service.post(
        **MAIL, attachments=[{"filename": "big.bin", "content_type": "application/octet-stream", "content": b64(big)}]
    )

    assert response.status_code == 202, response.text
    await service.wait_for_status(response.json()["id"], "sent", timeout=30)
    [attachment] = smtp_sink.received[0].message.iter_attachments()
    assert attachment.get_content() == big


async def test_a_refusal_does_not_echo_the_attachments_content(service: Service) -> None:
    no_body = {"to": ["ada@example.com"], "subject": "No body"}
    whole = await service.post(**no_body, attachments=[invoice()])
    one = await service.post(**MAIL, attachments=[{k: v for k, v in invoice().items() if k != "filename"}])
    batch = await service.client.post(
        "/v1/notifications/batch", json={"notifications": [{**no_body, "attachments": [invoice()]}]}
    )

    for response in (whole, one, batch):
        assert response.status_code in (202, 422), response.text
        assert b64(PDF)[:300] not in response.text
        assert f"<{len(b64(PDF))} characters, not echoed>" in response.text
