"""Postmark's routes (/compat/postmark): every field mapped onto our request and seen in the mail at the sink,
template sends on our templates, batches judged item by item, and every refusal in Postmark's
`{ErrorCode, Message}` with its codes."""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from service.http.compat.common import Refusal
from service.http.compat.postmark import tag_of
from tests.conftest import Service, make_settings, running
from tests.http.compat.conftest import KEY, POSTMARK
from tests.smtp_sink import SmtpSink

MAIL: dict[str, Any] = {"From": "shop@example.com", "To": "ada@example.com", "Subject": "Hi", "TextBody": "Hello"}


async def send(service: Service, body: Any, path: str = "/email", **headers: str) -> Any:
    return await service.client.post(f"/compat/postmark{path}", json=body, headers={**POSTMARK, **headers})


def assert_postmark_error(response: Any, status: int, code: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"ErrorCode", "Message"}, body
    assert body["ErrorCode"] == code, body
    for word in words:
        assert word in body["Message"], body


def assert_sent(item: dict[str, Any], to: str) -> None:
    assert (item["To"], item["ErrorCode"], item["Message"]) == (to, 0, "OK"), item
    assert datetime.fromisoformat(item["SubmittedAt"]).tzinfo is not None
    assert item["MessageID"]


async def test_every_field_reaches_the_mail(compat: Service, smtp_sink: SmtpSink) -> None:
    response = await send(
        compat,
        {
            "From": "Shop <shop@example.com>",
            "To": 'ada@example.com, "Lovelace, Ada" <ada2@example.com>',
            "Cc": "carol@example.com",
            "Bcc": "dave@example.com, erin@example.com",
            "Subject": "Your order",
            "HtmlBody": '<p>Thanks <img src="cid:logo.png"></p>',
            "TextBody": "Thanks",
            "ReplyTo": "help@example.org",
            "Headers": [{"Name": "X-Campaign", "Value": "spring"}],
            "Attachments": [
                {"Name": "invoice.txt", "Content": base64.b64encode(b"invoice").decode(), "ContentType": "text/plain"},
                {"Name": "logo.png", "Content": "iVBORw==", "ContentType": "image/png", "ContentID": "cid:logo.png"},
            ],
            "Tag": "Order Confirmation",
            "Metadata": {"order": "42"},
            "MessageStream": "outbound",
            "TrackOpens": True,
            "TrackLinks": "HtmlAndText",
        },
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert_sent(answer, 'ada@example.com, "Lovelace, Ada" <ada2@example.com>')

    status = await compat.wait_for_status(answer["MessageID"], "sent")
    assert status["tags"] == ["order-confirmation"]
    assert status["metadata"] == {"order": "42", "MessageStream": "outbound", "Tag": "Order Confirmation"}
    [mail] = await smtp_sink.wait_for(1)
    assert set(mail.rcpt_tos) == {
        "ada@example.com",
        "ada2@example.com",
        "carol@example.com",
        "dave@example.com",
        "erin@example.com",
    }
    message = mail.message
    assert message["To"] == 'ada@example.com, "Lovelace, Ada" <ada2@example.com>'
    assert message["Cc"] == "carol@example.com"
    assert message["From"] == "Shop <shop@example.com>"
    assert mail.mail_from == "shop@example.com"
    assert message["Reply-To"] == "help@example.org"
    assert message["Subject"] == "Your order"
    assert message["X-Campaign"] == "spring"
    assert message.get_body(("html",)).get_content().strip() == '<p>Thanks <img src="cid:logo.png"></p>'
    parts = {part.get_filename(): part for part in message.walk() if part.get_filename()}
    assert parts["invoice.txt"].get_payload(decode=True) == b"invoice"
    assert parts["logo.png"]["Content-ID"] == "<logo.png>"


async def test_the_sender_is_the_mails_from_and_status_says_so(compat: Service, smtp_sink: SmtpSink) -> None:
    response = await send(compat, MAIL)
    assert response.status_code == 200
    [mail] = await smtp_sink.wait_for(1)
    assert (mail.message["From"], mail.message["Reply-To"]) == ("shop@example.com", None)
    status = await compat.wait_for_status(response.json()["MessageID"], "sent")
    assert status["from"] == "shop@example.com"


@pytest.mark.parametrize(
    ("tag", "ours"),
    [("welcome", "welcome"), ("Welcome Mail", "welcome-mail"), ("  a/b  c ", "a-b-c"), ("x" * 100, "x" * 64)],
)
def test_a_tag_is_put_in_our_charset(tag: str, ours: str) -> None:
    assert tag_of(tag) == ours


def test_a_tag_without_a_letter_or_digit_is_refused() -> None:
    with pytest.raises(Refusal):
        tag_of("!!!")


async def test_a_template_send_renders_our_template(compat: Service, smtp_sink: SmtpSink) -> None:
    response = await send(
        compat,
        {
            "From": "shop@example.com",
            "To": "ada@example.com",
            "TemplateAlias": "welcome",
            "TemplateModel": {
                "first_name": "Ada",
                "login_url": "https://example.com/login",
                "email": "ada@example.com",
                "product": "Acme",
            },
            "InlineCss": True,
        },
        "/email/withTemplate",
    )
    assert response.status_code == 200, response.text
    assert_sent(response.json(), "ada@example.com")
    [mail] = await smtp_sink.wait_for(1)
    assert mail.message["Subject"] == "Welcome to Acme, Ada!"


async def test_template_refusals_use_postmarks_codes(compat: Service) -> None:
    base = {"From": "shop@example.com", "To": "ada@example.com"}
    unknown = await send(compat, {**base, "TemplateAlias": "nope"}, "/email/withTemplate")
    assert_postmark_error(unknown, 422, 1101, "no template 'nope'")
    by_id = await send(compat, {**base, "TemplateId": 12345}, "/email/withTemplate")
    assert_postmark_error(by_id, 422, 1101, "TemplateAlias")
    missing = await send(compat, {**base, "TemplateAlias": "welcome"}, "/email/withTemplate")
    assert_postmark_error(missing, 422, 300, "TemplateModel", "first_name")


async def test_a_batch_judges_each_item_alone(compat: Service, smtp_sink: SmtpSink) -> None:
    response = await send(
        compat, [MAIL, {**MAIL, "To": "not-an-address"}, {**MAIL, "To": "bob@example.com"}], "/email/batch"
    )
    assert response.status_code == 200, response.text
    first, bad, third = response.json()
    assert_sent(first, "ada@example.com")
    assert_sent(third, "bob@example.com")
    assert (bad["ErrorCode"], bad["MessageID"]) == (300, "")
    assert "To[0]" in bad["Message"]
    assert len(await smtp_sink.wait_for(2)) == 2


async def test_a_batch_with_templates(compat: Service, smtp_sink: SmtpSink) -> None:
    message = {"From": "shop@example.com", "To": "ada@example.com", "TemplateAlias": "welcome"}
    response = await send(
        compat,
        {
            "Messages": [
                {
                    **message,
                    "TemplateModel": {
                        "first_name": "Ada",
                        "login_url": "https://example.com/login",
                        "email": "ada@example.com",
                    },
                },
                {**message, "TemplateAlias": "nope"},
            ]
        },
        "/email/batchWithTemplates",
    )
    assert response.status_code == 200, response.text
    sent, unknown = response.json()
    assert_sent(sent, "ada@example.com")
    assert unknown["ErrorCode"] == 1101
    assert len(await smtp_sink.wait_for(1)) == 1


async def test_a_suppressed_recipient_is_406_inactive(compat: Service) -> None:
    added = await compat.client.post("/v1/suppressions", json={"address": "gone@example.com"})
    assert added.status_code == 201, added.text
    response = await send(compat, {**MAIL, "To": "gone@example.com"})
    assert_postmark_error(response, 422, 406, "Found inactive addresses: gone@example.com.")
    batch = await send(compat, [{**MAIL, "To": "gone@example.com"}], "/email/batch")
    assert batch.json()[0]["ErrorCode"] == 406


async def test_the_token_is_checked_as_postmark_says_it(compat: Service) -> None:
    missing = await compat.client.post("/compat/postmark/email", json=MAIL)
    assert_postmark_error(missing, 401, 10)
    wrong = await compat.client.post("/compat/postmark/email", json=MAIL, headers={"X-Postmark-Server-Token": "nope"})
    assert_postmark_error(wrong, 401, 10)
    # Our bearer key is not Postmark's header: refused too.
    bearer = await compat.client.post("/compat/postmark/email", json=MAIL, headers={"Authorization": f"Bearer {KEY}"})
    assert_postmark_error(bearer, 401, 10)


async def test_bad_input_is_refused_in_postmarks_shape(compat: Service) -> None:
    for body, word in (
        ({**MAIL, "To": "not-an-address"}, "To[0]"),
        ({k: v for k, v in MAIL.items() if k != "From"}, "From"),
        ({**MAIL, "From": "someone@elsewhere.org"}, "From"),
        ({**MAIL, "Headers": [{"Name": "Bcc", "Value": "x@example.com"}]}, "Headers"),
        ({**MAIL, "ReplyTo": "a@example.com, b@example.com"}, "ReplyTo"),
        ({**MAIL, "Tag": "!!!"}, "Tag"),
        ({**MAIL, "Attachments": [{"Name": "a", "Content": "not base64!", "ContentType": "text/plain"}]}, "Attach"),
        ({**MAIL, "TextBody": None}, "TextBody"),
        ({**MAIL, "Unknown": 1}, "Unknown"),
    ):
        assert_postmark_error(await send(compat, body), 422, 300, word)


async def test_routes_not_offered_answer_501(compat: Service) -> None:
    for method, path in (("GET", "bounces"), ("GET", "templates"), ("POST", "email/bulk"), ("GET", "deliverystats")):
        response = await compat.client.request(method, f"/compat/postmark/{path}", headers=POSTMARK)
        assert_postmark_error(response, 501, 404, "not offered")


async def test_the_limits_answer_in_postmarks_shape(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(
        tmp_path, smtp_sink.port, COMPAT_APIS="postmark", MAX_BODY_BYTES=2048, QUEUE_LIMIT=1, BATCH_LIMIT=2
    )
    async with running(settings) as service:
        assert_postmark_error(await send(service, {**MAIL, "TextBody": "x" * 4096}), 413, 300, "MAX_BODY_BYTES")
        assert_postmark_error(await send(service, [MAIL] * 3, "/email/batch"), 422, 410, "BATCH_LIMIT=2")
        smtp_sink.handler.data_open.clear()
        try:
            assert (await send(service, MAIL)).status_code == 200
            for _ in range(50):
                full = await send(service, MAIL)
                if full.status_code == 429:
                    break
            assert_postmark_error(full, 429, 429, "QUEUE_LIMIT")
            assert int(full.headers["Retry-After"]) > 0
        finally:
            smtp_sink.handler.data_open.set()
