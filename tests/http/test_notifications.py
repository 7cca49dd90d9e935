"""POST /v1/notifications and friends, through the real app, outbox and a real SMTP server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from tests.conftest import MAIL, Service, captured_events, make_settings, running
from tests.smtp_sink import SmtpSink


async def test_accepted_notification_is_sent(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.post(**MAIL, metadata={"user_id": "42"})

    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/v1/notifications/{body['id']}"
    assert body["status"] == "queued"
    assert body["metadata"] == {"user_id": "42"}
    sent = await service.wait_for_status(body["id"], "sent")
    assert sent["attempts"] == 1
    assert sent["sent_at"] is not None
    assert sent["smtp_reply"].startswith("250")
    assert sent["last_error"] is None
    [mail] = await smtp_sink.wait_for(1)
    assert mail.mail_from == "notifier@example.com"
    assert mail.rcpt_tos == ["ada@example.com"]
    message = mail.message
    assert message["Subject"] == "Hello"
    assert message["From"] == "Notifier <notifier@example.com>"
    assert message["Message-ID"] == sent["message_id"]
    assert message["Date"]
    assert message.get_content().strip() == "Hi Ada"


async def test_text_and_html_make_a_multipart_alternative(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.post(to=["ada@example.com"], subject="Both", text="plain words", html="<b>bold</b>")

    await service.wait_for_status(response.json()["id"], "sent")
    message = smtp_sink.received[0].message
    assert message.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content().strip() for part in message.iter_parts()}
    assert parts == {"text/plain": "plain words", "text/html": "<b>bold</b>"}


async def test_html_only_is_a_single_html_part(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.post(to=["ada@example.com"], subject="Html", html="<p>hi</p>")

    await service.wait_for_status(response.json()["id"], "sent")
    assert smtp_sink.received[0].message.get_content_type() == "text/html"


async def test_cc_and_bcc_are_envelope_recipients_and_bcc_is_never_a_header(
    service: Service, smtp_sink: SmtpSink
) -> None:
    response = await service.post(
        to=["Ada Lovelace <ada@example.com>"],
        cc=["grace@example.com"],
        bcc=["secret@example.com"],
        reply_to="replies@example.com",
        subject="Copies",
        text="hi",
    )

    body = response.json()
    assert body["to"] == ["Ada Lovelace <ada@example.com>"]
    assert body["bcc"] == ["secret@example.com"]
    await service.wait_for_status(body["id"], "sent")
    [mail] = smtp_sink.received
    assert sorted(mail.rcpt_tos) == ["ada@example.com", "grace@example.com", "secret@example.com"]
    message = mail.message
    assert message["To"] == "Ada Lovelace <ada@example.com>"
    assert message["Cc"] == "grace@example.com"
    assert message["Reply-To"] == "replies@example.com"
    assert "Bcc" not in message
    assert b"secret@example.com" not in mail.data


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**MAIL, "to": ["not-an-address"]}, "to"),
        ({**MAIL, "to": ["Eve <eve@example.com>\r\nBcc: victim@example.com"]}, "to"),
        ({**MAIL, "subject": "Hi\r\nBcc: victim@example.com"}, "subject"),
        ({**MAIL, "subject": "Hi\nthere"}, "subject"),
        ({**MAIL, "subject": "nul\x00"}, "subject"),
        ({**MAIL, "subject": ""}, "subject"),
        ({**MAIL, "subject": "x" * 999}, "subject"),
        ({**MAIL, "to": []}, "to"),
        ({"to": ["ada@example.com"], "subject": "No body"}, None),
        ({**MAIL, "reply_to": "nope"}, "reply_to"),
        ({**MAIL, "metadata": {"bad key\n": "v"}}, "metadata"),
        ({**MAIL, "metadata": {"k": 1}}, "metadata"),
        ({**MAIL, "unexpected": "field"}, "unexpected"),
    ],
)
async def test_invalid_notifications_are_refused_with_422(
    service: Service, smtp_sink: SmtpSink, body: dict[str, object], field: str | None
) -> None:
    response = await service.client.post("/v1/notifications", json=body)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list)
    assert detail
    if field is not None:
        assert any(field in [str(part) for part in error["loc"]] for error in detail), detail
    listed = await service.client.get("/v1/notifications")
    assert listed.json()["items"] == []


async def test_too_many_recipients_are_refused(service: Service) -> None:
    limit = service.app.state.settings.MAX_RECIPIENTS
    response = await service.post(
        to=[f"user{i}@example.com" for i in range(limit)], cc=["one-more@example.com"], subject="s", text="t"
    )

    assert response.status_code == 422
    assert "MAX_RECIPIENTS" in response.json()["detail"][0]["msg"]


async def test_malformed_json_is_422(service: Service) -> None:
    response = await service.client.post(
        "/v1/notifications", content=b'{"to": [', headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_unknown_notification_is_404(service: Service) -> None:
    response = await service.client.get("/v1/notifications/does-not-exist")

    assert response.status_code == 404
    assert "does-not-exist" in response.json()["detail"]


async def test_451_is_retried_until_accepted(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.extend(["451 4.3.0 try again later", "451 4.3.0 still busy"])

    response = await service.post(**MAIL)

    sent = await service.wait_for_status(response.json()["id"], "sent")
    assert sent["attempts"] == 3
    assert len(smtp_sink.received) == 1


async def test_550_fails_at_once_with_the_servers_reply(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.append("550 5.7.1 rejected by policy")

    response = await service.post(**MAIL)

    failed = await service.wait_for_status(response.json()["id"], "failed")
    assert failed["attempts"] == 1
    assert failed["last_error"] == "550 5.7.1 rejected by policy"
    assert smtp_sink.received == []


async def test_transient_failures_give_up_after_max_attempts(service: Service, smtp_sink: SmtpSink) -> None:
    attempts = service.app.state.settings.MAX_ATTEMPTS
    smtp_sink.handler.data_replies.extend(["452 4.3.1 out of storage"] * attempts)

    response = await service.post(**MAIL)

    failed = await service.wait_for_status(response.json()["id"], "failed", timeout=20)
    assert failed["attempts"] == attempts
    assert failed["last_error"] == f"gave up after {attempts} attempts: 452 4.3.1 out of storage"


async def test_recipients_refused_one_by_one_are_recorded(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.refuse["gone@example.com"] = "550 5.1.1 no such user"

    response = await service.post(to=["ada@example.com", "gone@example.com"], subject="s", text="t")

    sent = await service.wait_for_status(response.json()["id"], "sent")
    assert sent["refused_recipients"] == [{"address": "gone@example.com", "code": 550, "message": "5.1.1 no such user"}]
    assert smtp_sink.received[0].rcpt_tos == ["ada@example.com"]


async def test_every_recipient_refused_permanently_fails(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.refuse["gone@example.com"] = "550 5.1.1 no such user"

    response = await service.post(to=["gone@example.com"], subject="s", text="t")

    failed = await service.wait_for_status(response.json()["id"], "failed")
    assert failed["attempts"] == 1
    assert "550 5.1.1 no such user" in failed["last_error"]
    assert failed["refused_recipients"][0]["address"] == "gone@example.com"


async def test_retry_route_queues_a_failed_notification_again(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.append("554 5.0.0 transaction failed")
    notification_id = (await service.post(**MAIL)).json()["id"]
    await service.wait_for_status(notification_id, "failed")

    response = await service.client.post(f"/v1/notifications/{notification_id}/retry")

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.json()["attempts"] == 0
    sent = await service.wait_for_status(notification_id, "sent")
    assert sent["attempts"] == 1
    again = await service.client.post(f"/v1/notifications/{notification_id}/retry")
    assert again.status_code == 409
    assert "sent" in again.json()["detail"]
    missing = await service.client.post("/v1/notifications/nope/retry")
    assert missing.status_code == 404


async def test_listing_is_newest_first_with_a_cursor_and_a_status_filter(service: Service, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.data_replies.append("550 no")
    first = (await service.post(**MAIL)).json()["id"]
    await service.wait_for_status(first, "failed")
    ids = [first] + [(await service.post(**MAIL)).json()["id"] for _ in range(4)]

    page = (await service.client.get("/v1/notifications", params={"limit": 3})).json()
    rest = (await service.client.get("/v1/notifications", params={"limit": 3, "cursor": page["next_cursor"]})).json()
    failed = (await service.client.get("/v1/notifications", params={"status": "failed"})).json()

    assert [item["id"] for item in page["items"] + rest["items"]] == ids[::-1]
    assert rest["next_cursor"] is None
    assert [item["id"] for item in failed["items"]] == [first]
    bad = await service.client.get("/v1/notifications", params={"status": "lost"})
    assert bad.status_code == 422


async def test_request_id_follows_the_notification_into_the_dispatchers_logs(
    service: Service, smtp_sink: SmtpSink
) -> None:
    with captured_events() as events:
        response = await service.client.post("/v1/notifications", json=MAIL, headers={"X-Request-ID": "req-123"})
        notification_id = response.json()["id"]
        await service.wait_for_status(notification_id, "sent")

    assert response.headers["x-request-id"] == "req-123"
    assert response.json()["request_id"] == "req-123"
    mine = [e for e in events if e.get("notification_id") == notification_id]
    assert [e["event"] for e in mine] == [
        "notification_accepted",
        "notification_sending",
        "notification_sent",
    ]
    assert {e.get("request_id") for e in mine} == {"req-123"}


async def test_a_request_id_is_made_when_none_is_given(service: Service) -> None:
    response = await service.post(**MAIL)

    assert len(response.headers["x-request-id"]) == 32
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_a_cursor_beyond_any_row_number_is_a_422_not_a_crash(service: Service) -> None:
    response = await service.client.get("/v1/notifications", params={"cursor": "9875188202668174699"})

    assert response.status_code == 422


async def test_nan_in_a_body_is_a_422_not_a_500(service: Service) -> None:
    response = await service.client.post(
        "/v1/notifications",
        content=b'{"to": ["ada@example.com"], "subject": NaN, "text": "t"}',
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "subject"]


async def test_a_batch_with_a_lone_surrogate_in_one_item_refuses_that_item_only(service: Service) -> None:
    batch = {"notifications": [MAIL, {"to": ["ada@example.com"], "template": "welcome", "data": {"x": "\ud800"}}]}

    response = await service.client.post(
        "/v1/notifications/batch", content=json.dumps(batch), headers={"content-type": "application/json"}
    )

    assert response.status_code == 202
    first, second = response.json()["items"]
    assert first["status"] == "queued"
    assert "surrogate" in json.dumps(second["error"])


async def test_a_recipient_refused_for_now_gets_the_mail_later_and_the_others_only_once(
    service: Service, smtp_sink: SmtpSink
) -> None:
    # Greylisting: the server refuses one recipient with 451 twice while it takes the mail for the others.
    smtp_sink.handler.refuse["grey@example.com"] = "451 4.7.1 greylisted, try again later"
    smtp_sink.handler.refuse_times["grey@example.com"] = 2
    smtp_sink.handler.refuse["gone@example.com"] = "550 5.1.1 no such user"

    response = await service.post(
        to=["ada@example.com", "grey@example.com"], cc=["gone@example.com"], subject="s", text="t"
    )

    sent = await service.wait_for_status(response.json()["id"], "sent")
    assert [r.rcpt_tos for r in smtp_sink.received] == [["ada@example.com"], ["grey@example.com"]]
    # The same mail both times: the headers still name everyone, the Message-ID is the same.
    first, second = (r.message for r in smtp_sink.received)
    assert first["To"] == second["To"] == "ada@example.com, grey@example.com"
    assert first["Message-ID"] == second["Message-ID"]
    assert sent["attempts"] == 3
    assert sent["refused_recipients"] == [{"address": "gone@example.com", "code": 550, "message": "5.1.1 no such user"}]
    assert "grey@example.com: 451" in sent["last_error"]


@pytest.mark.parametrize(
    "body",
    [
        {**MAIL, "subject": "a\ud800b"},
        {**MAIL, "text": "\udfff"},
        {**MAIL, "metadata": {"k": "\ud800"}},
        {"to": ["ada@example.com"], "template": "welcome", "data": {"first_name": "\ud800"}},
    ],
)
async def test_a_lone_surrogate_is_a_422_not_a_500(service: Service, body: dict[str, object]) -> None:
    # json.dumps escapes it ("\\ud800"), as a client's JSON library would send it.
    response = await service.client.post(
        "/v1/notifications", content=json.dumps(body), headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert "surrogate" in response.text


async def test_when_every_recipient_is_refused_only_those_refused_for_now_are_tried_again(
    service: Service, smtp_sink: SmtpSink
) -> None:
    smtp_sink.handler.refuse["grey@example.com"] = "451 4.7.1 greylisted"
    smtp_sink.handler.refuse_times["grey@example.com"] = 1
    smtp_sink.handler.refuse["gone@example.com"] = "550 5.1.1 no such user"

    response = await service.post(to=["grey@example.com", "gone@example.com"], subject="s", text="t")

    sent = await service.wait_for_status(response.json()["id"], "sent")
    assert [r.rcpt_tos for r in smtp_sink.received] == [["grey@example.com"]]
    # The address refused for good was not asked again.
    assert smtp_sink.handler.rcpt_asked == ["grey@example.com", "gone@example.com", "grey@example.com"]
    assert sent["attempts"] == 2
    assert [r["address"] for r in sent["refused_recipients"]] == ["gone@example.com"]


async def test_message_ids_take_the_domain_of_each_apps_mail_from(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    # The domain is worked out once per MAIL_FROM: an app with another MAIL_FROM must not get the first's.
    for mail_from, domain in [
        ("Notifier <notifier@example.com>", "example.com"),
        ("ops@mail.example.org", "mail.example.org"),
    ]:
        async with running(make_settings(tmp_path / domain, smtp_sink.port, MAIL_FROM=mail_from)) as service:
            body = (await service.post(**MAIL)).json()
            assert body["message_id"] == f"<{body['id']}@{domain}>"


async def test_the_request_id_is_unbound_once_the_request_is_answered(service: Service) -> None:
    # The transport runs the app in this task's context: a binding left behind would show up here.
    await service.client.post("/v1/notifications", json=MAIL, headers={"X-Request-ID": "req-leak"})

    assert "request_id" not in structlog.contextvars.get_contextvars()
