"""Resend's routes (/compat/resend): every field mapped onto our request and seen in the mail at the sink, the
status in Resend's shape, reschedule and cancel, batches strict and permissive, Idempotency-Key, and every
refusal in Resend's `{statusCode, name, message}`."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.domain import Status
from service.http.compat.resend import last_event
from service.outbox import Notification
from tests.conftest import Service, make_settings, running
from tests.http.compat.conftest import KEY, RESEND
from tests.smtp_sink import SmtpSink

MAIL: dict[str, Any] = {"from": "Shop <shop@example.com>", "to": "ada@example.com", "subject": "Hi", "text": "Hello"}


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def send(service: Service, body: dict[str, Any], **headers: str) -> Any:
    return await service.client.post("/compat/resend/emails", json=body, headers={**RESEND, **headers})


def assert_resend_error(response: Any, status: int, name: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"statusCode", "name", "message"}, body
    assert (body["statusCode"], body["name"]) == (status, name), body
    for word in words:
        assert word in body["message"], body


async def test_every_field_reaches_the_mail(compat: Service, smtp_sink: SmtpSink) -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    response = await send(
        compat,
        {
            "from": "Shop <shop@example.com>",
            "to": ["ada@example.com", "Bob <bob@example.com>"],
            "cc": "carol@example.com",
            "bcc": ["dave@example.com"],
            "subject": "Your order",
            "html": '<p>Thanks <img src="cid:logo"></p>',
            "text": "Thanks",
            "headers": {"X-Campaign": "spring"},
            "attachments": [
                {"filename": "invoice.txt", "content": base64.b64encode(b"invoice 42").decode()},
                {"filename": "logo.png", "content": list(png), "content_id": "logo"},
                {"filename": "data.bin", "content": "AAE=", "content_type": "application/x-thing"},
            ],
            "tags": [{"name": "category", "value": "order"}],
        },
    )
    assert response.status_code == 200, response.text
    email_id = response.json()["id"]
    assert set(response.json()) == {"id"}

    status = await compat.wait_for_status(email_id, "sent")
    assert status["metadata"] == {"category": "order"}
    assert status["headers"] == {"X-Campaign": "spring"}
    [mail] = await smtp_sink.wait_for(1)
    assert set(mail.rcpt_tos) == {"ada@example.com", "bob@example.com", "carol@example.com", "dave@example.com"}
    message = mail.message
    assert message["To"] == "ada@example.com, Bob <bob@example.com>"
    assert message["Cc"] == "carol@example.com"
    assert message["Bcc"] is None
    # The requested sender (allowed: MAIL_FROM's domain) is the mail's From and envelope sender.
    assert message["From"] == "Shop <shop@example.com>"
    assert mail.mail_from == "shop@example.com"
    assert message["Reply-To"] is None
    assert message["Subject"] == "Your order"
    assert message["X-Campaign"] == "spring"
    assert message.get_body(("plain",)).get_content().strip() == "Thanks"
    parts = {part.get_filename(): part for part in message.walk() if part.get_filename()}
    assert parts["invoice.txt"].get_payload(decode=True) == b"invoice 42"
    assert parts["invoice.txt"].get_content_type() == "text/plain"
    assert parts["logo.png"].get_payload(decode=True) == png
    assert parts["logo.png"]["Content-ID"] == "<logo>"
    assert parts["data.bin"].get_content_type() == "application/x-thing"


async def test_a_reply_to_of_its_own_is_kept(compat: Service, smtp_sink: SmtpSink) -> None:
    response = await send(compat, {**MAIL, "reply_to": ["help@example.org"]})
    assert response.status_code == 200, response.text
    [mail] = await smtp_sink.wait_for(1)
    assert mail.message["Reply-To"] == "help@example.org"


async def test_the_status_in_resends_shape(compat: Service, smtp_sink: SmtpSink) -> None:
    response = await send(compat, {**MAIL, "cc": ["carol@example.com"], "tags": [{"name": "a", "value": "b"}]})
    email_id = response.json()["id"]
    await compat.wait_for_status(email_id, "sent")

    got = await compat.client.get(f"/compat/resend/emails/{email_id}", headers=RESEND)

    assert got.status_code == 200, got.text
    body = got.json()
    assert body["object"] == "email"
    assert body["id"] == email_id
    assert (body["to"], body["cc"], body["bcc"]) == (["ada@example.com"], ["carol@example.com"], None)
    assert body["from"] == "Shop <shop@example.com>"
    assert body["reply_to"] is None
    assert (body["subject"], body["text"], body["html"]) == ("Hi", "Hello", None)
    assert body["last_event"] == "sent"
    assert body["scheduled_at"] is None
    assert body["tags"] == [{"name": "a", "value": "b"}]
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None


@pytest.mark.parametrize(
    ("status", "attempts", "last_error", "event"),
    [
        (Status.SCHEDULED, 0, None, "scheduled"),
        (Status.QUEUED, 0, None, "queued"),
        (Status.SENDING, 1, None, "queued"),
        (Status.QUEUED, 1, "421 busy", "delivery_delayed"),
        (Status.SENT, 1, None, "sent"),
        (Status.FAILED, 3, "550 no", "failed"),
        (Status.CANCELED, 0, None, "canceled"),
    ],
)
def test_last_event_from_our_status(status: Status, attempts: int, last_error: str | None, event: str) -> None:
    notification = Notification(
        id="x", to=["a@example.com"], subject="s", message_id="<x@y>", created_at=0.0, status=status
    )
    notification.attempts, notification.last_error = attempts, last_error
    assert last_event(notification) == event


async def test_schedule_reschedule_and_cancel(compat: Service, smtp_sink: SmtpSink) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = await send(compat, {**MAIL, "scheduled_at": later})
    email_id = response.json()["id"]
    got = (await compat.client.get(f"/compat/resend/emails/{email_id}", headers=RESEND)).json()
    assert got["last_event"] == "scheduled"
    assert datetime.fromisoformat(got["scheduled_at"]) == datetime.fromisoformat(later)

    even_later = datetime.now(UTC) + timedelta(hours=2)
    moved = await compat.client.patch(
        f"/compat/resend/emails/{email_id}", json={"scheduled_at": even_later.isoformat()}, headers=RESEND
    )
    assert moved.status_code == 200, moved.text
    assert moved.json() == {"object": "email", "id": email_id}
    status = (await compat.client.get(f"/v1/notifications/{email_id}")).json()
    assert (status["status"], datetime.fromisoformat(status["send_at"])) == ("scheduled", even_later)

    canceled = await compat.client.post(f"/compat/resend/emails/{email_id}/cancel", headers=RESEND)
    assert canceled.status_code == 200, canceled.text
    assert canceled.json() == {"object": "email", "id": email_id}
    got = (await compat.client.get(f"/compat/resend/emails/{email_id}", headers=RESEND)).json()
    assert got["last_event"] == "canceled"

    again = await compat.client.post(f"/compat/resend/emails/{email_id}/cancel", headers=RESEND)
    assert_resend_error(again, 422, "validation_error", "is canceled")
    late = await compat.client.patch(
        f"/compat/resend/emails/{email_id}", json={"scheduled_at": even_later.isoformat()}, headers=RESEND
    )
    assert_resend_error(late, 422, "validation_error", "only a scheduled e-mail")
    assert smtp_sink.received == []


async def test_rescheduling_to_a_past_time_sends_it_now(compat: Service, smtp_sink: SmtpSink) -> None:
    response = await send(compat, {**MAIL, "scheduled_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()})
    email_id = response.json()["id"]

    moved = await compat.client.patch(
        f"/compat/resend/emails/{email_id}", json={"scheduled_at": "2020-01-01T00:00:00Z"}, headers=RESEND
    )

    assert moved.status_code == 200, moved.text
    await compat.wait_for_status(email_id, "sent")
    assert len(await smtp_sink.wait_for(1)) == 1


async def test_bad_schedules_are_refused_in_resends_shape(compat: Service) -> None:
    natural = await send(compat, {**MAIL, "scheduled_at": "in 1 min"})
    assert_resend_error(natural, 422, "validation_error", "scheduled_at")
    response = await send(compat, {**MAIL, "scheduled_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    email_id = response.json()["id"]
    too_far = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    moved = await compat.client.patch(
        f"/compat/resend/emails/{email_id}", json={"scheduled_at": too_far}, headers=RESEND
    )
    assert_resend_error(moved, 422, "validation_error", "scheduled_at", "MAX_SCHEDULE_DAYS")


async def test_an_unknown_email_is_not_found(compat: Service) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for response in (
        await compat.client.get("/compat/resend/emails/no-such-id", headers=RESEND),
        await compat.client.post("/compat/resend/emails/no-such-id/cancel", headers=RESEND),
        await compat.client.patch("/compat/resend/emails/no-such-id", json={"scheduled_at": soon}, headers=RESEND),
    ):
        assert_resend_error(response, 404, "not_found", "Email not found")


async def test_a_strict_batch_is_refused_whole_naming_the_bad_item(compat: Service) -> None:
    response = await compat.client.post(
        "/compat/resend/emails/batch", json=[MAIL, {**MAIL, "to": "not-an-address"}], headers=RESEND
    )
    assert_resend_error(response, 422, "validation_error", "[1]", "to")
    assert (await compat.client.get("/v1/notifications")).json()["items"] == []


async def test_a_batch_sends_each_and_answers_their_ids(compat: Service, smtp_sink: SmtpSink) -> None:
    response = await compat.client.post(
        "/compat/resend/emails/batch",
        json=[MAIL, {**MAIL, "to": ["bob@example.com"], "subject": "Second"}],
        headers=RESEND,
    )
    assert response.status_code == 200, response.text
    ids = [item["id"] for item in response.json()["data"]]
    assert set(response.json()) == {"data"}
    assert len(ids) == 2
    mails = await smtp_sink.wait_for(2)
    assert sorted(m.message["Subject"] for m in mails) == ["Hi", "Second"]


async def test_a_permissive_batch_sends_the_good_and_lists_the_bad(compat: Service, smtp_sink: SmtpSink) -> None:
    response = await compat.client.post(
        "/compat/resend/emails/batch",
        json=[{**MAIL, "to": "bad"}, MAIL, {"nonsense": True}],
        headers={**RESEND, "x-batch-validation": "permissive"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["data"]) == 1
    assert [error["index"] for error in body["errors"]] == [0, 2]
    assert "to" in body["errors"][0]["message"]
    await compat.wait_for_status(body["data"][0]["id"], "sent")
    assert len(await smtp_sink.wait_for(1)) == 1


async def test_an_idempotency_key_answers_a_retry_with_the_first_id(compat: Service, smtp_sink: SmtpSink) -> None:
    first = await send(compat, MAIL, **{"Idempotency-Key": "order-42"})
    again = await send(compat, MAIL, **{"Idempotency-Key": "order-42"})
    other = await send(compat, {**MAIL, "subject": "Else"}, **{"Idempotency-Key": "order-42"})

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert_resend_error(other, 409, "invalid_idempotent_request", "order-42")
    await compat.wait_for_status(first.json()["id"], "sent")
    assert len((await compat.client.get("/v1/notifications")).json()["items"]) == 1


async def test_keys_are_checked_as_resend_says_it(compat: Service) -> None:
    missing = await compat.client.post("/compat/resend/emails", json=MAIL, headers={"Authorization": ""})
    assert_resend_error(missing, 401, "missing_api_key")
    wrong = await compat.client.post("/compat/resend/emails", json=MAIL, headers={"Authorization": "Bearer re_nope"})
    assert_resend_error(wrong, 403, "invalid_api_key")
    assert KEY not in wrong.text


async def test_bad_input_is_refused_in_resends_shape(compat: Service) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({**MAIL, "to": "not-an-address"}, "validation_error", "to[0]"),
        ({k: v for k, v in MAIL.items() if k != "to"}, "validation_error", "to"),
        ({**MAIL, "react": "<Email />"}, "validation_error", "react"),
        ({**MAIL, "headers": {"From": "x@example.com"}}, "validation_error", "headers"),
        ({**MAIL, "reply_to": ["a@example.com", "b@example.com"]}, "validation_error", "reply_to"),
        ({**MAIL, "tags": [{"name": "has space", "value": "x"}]}, "validation_error", "tags"),
        ({**MAIL, "attachments": [{"filename": "a.txt", "content": [256]}]}, "validation_error", "attachments"),
        ({**MAIL, "attachments": [{"filename": "a.txt"}]}, "invalid_attachment", "attachments[0]"),
    ]
    for body, name, word in cases:
        assert_resend_error(await send(compat, body), 422, name, word)
    not_json = await compat.client.post(
        "/compat/resend/emails", content=b"{", headers={**RESEND, "content-type": "application/json"}
    )
    assert_resend_error(not_json, 422, "validation_error")


async def test_a_sender_outside_compat_allowed_from_is_refused(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(
        tmp_path, smtp_sink.port, COMPAT_APIS="resend", COMPAT_ALLOWED_FROM="billing@example.org, example.net"
    )
    async with running(settings) as service:
        for sender in ("billing@example.org", "Anyone <anyone@EXAMPLE.net>"):
            assert (await send(service, {**MAIL, "from": sender})).status_code == 200
        for sender in ("shop@example.com", "other@example.org"):
            assert_resend_error(await send(service, {**MAIL, "from": sender}), 422, "validation_error", "from")


async def test_routes_not_offered_answer_501_and_others_404(compat: Service) -> None:
    for method, path in (("GET", "domains"), ("POST", "audiences/x/contacts"), ("GET", "emails")):
        response = await compat.client.request(method, f"/compat/resend/{path}", headers=RESEND)
        assert_resend_error(response, 501, "not_implemented", "not offered")
    assert_resend_error(await compat.client.get("/compat/resend/nonsense", headers=RESEND), 404, "not_found")


async def test_the_body_limit_and_queue_limit_answer_in_resends_shape(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, COMPAT_APIS="resend", MAX_BODY_BYTES=2048, QUEUE_LIMIT=1)
    async with running(settings) as service:
        too_large = await send(service, {**MAIL, "text": "x" * 4096})
        assert_resend_error(too_large, 413, "validation_error", "MAX_BODY_BYTES")
        streamed = await service.client.post(
            "/compat/resend/emails",
            content=chunks(b'{"text": "', b"x" * 4096, b'"}'),
            headers={"content-type": "application/json"},
        )
        assert_resend_error(streamed, 413, "validation_error", "MAX_BODY_BYTES")
        deep = await service.client.post(
            "/compat/resend/emails", content=b"[" * 40 + b"]" * 40, headers={"content-type": "application/json"}
        )
        assert_resend_error(deep, 422, "validation_error")

        smtp_sink.handler.data_open.clear()
        try:
            assert (await send(service, MAIL)).status_code == 200
            for _ in range(50):
                full = await send(service, MAIL)
                if full.status_code == 429:
                    break
            assert_resend_error(full, 429, "rate_limit_exceeded", "QUEUE_LIMIT")
            assert int(full.headers["Retry-After"]) > 0
        finally:
            smtp_sink.handler.data_open.set()


async def test_attachments_that_decode_too_large_are_413(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, COMPAT_APIS="resend", MAX_ATTACHMENT_BYTES=10)
    async with running(settings) as service:
        response = await send(service, {**MAIL, "attachments": [{"filename": "a.bin", "content": list(range(20))}]})
        assert_resend_error(response, 413, "validation_error", "MAX_ATTACHMENT_BYTES")
