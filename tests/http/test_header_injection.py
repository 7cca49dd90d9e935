"""Nothing a client sends can add a header to a mail: crafted values are refused (422) or end up inside the
header they were meant for. Proven by reading the mails the SMTP server received."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import MAIL, Service
from tests.smtp_sink import SmtpSink

# Headers the service writes, and nothing else may appear.
EXPECTED_HEADERS = {"from", "to", "cc", "reply-to", "subject", "date", "message-id", "mime-version",
                    "content-type", "content-transfer-encoding"}  # fmt: skip

BREAKERS = ["\r\n", "\n", "\r", "\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


def injected(value: str, breaker: str) -> str:
    return value + breaker + "Bcc: evil@attacker.example"


@pytest.mark.parametrize("breaker", BREAKERS, ids=repr)
@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("subject", lambda b: {"subject": injected("Hello", b)}),
        ("to", lambda b: {"to": [injected("ada@example.com", b)]}),
        ("to display name", lambda b: {"to": [f"{injected('Ada', b)} <ada@example.com>"]}),
        ("cc", lambda b: {"cc": [f"{injected('Grace', b)} <grace@example.com>"]}),
        ("bcc", lambda b: {"bcc": [injected("hidden@example.com", b)]}),
        ("reply_to", lambda b: {"reply_to": f"{injected('Replies', b)} <r@example.com>"}),
        ("metadata key", lambda b: {"metadata": {injected("k", b): "v"}}),
        ("headers value", lambda b: {"headers": {"X-Campaign": injected("spring", b)}}),
        ("headers name", lambda b: {"headers": {injected("X-Campaign", b): "spring"}}),
        ("List-Unsubscribe", lambda b: {"headers": {"List-Unsubscribe": injected("<https://e.com/u>", b)}}),
        ("tags", lambda b: {"tags": [injected("welcome", b)]}),
    ],
)
async def test_line_breaks_in_header_fields_are_refused(
    service: Service, smtp_sink: SmtpSink, field: str, make: Any, breaker: str
) -> None:
    response = await service.post(**{**MAIL, **make(breaker)})

    assert response.status_code == 422, f"{field} with {breaker!r} was accepted"
    assert response.json()["detail"]
    assert smtp_sink.received == []


@pytest.mark.parametrize(
    "fields",
    [
        {"subject": "=?utf-8?q?hi=0D=0ABcc:_w@attacker.example?="},
        {"subject": "a =?UTF-8?B?aGkNCkJjYzogd0BhdHRhY2tlci5leGFtcGxl?= b"},
        {"to": ["=?utf-8?q?Ada=0D=0ABcc:_w@attacker.example?= <ada@example.com>"]},
        {"reply_to": '"=?utf-8?q?R=0ABcc:_w@attacker.example?=" <r@example.com>'},
        {"headers": {"X-Campaign": "=?utf-8?q?x=0D=0ABcc:_w@attacker.example?="}},
    ],
)
async def test_encoded_words_are_refused(service: Service, smtp_sink: SmtpSink, fields: dict[str, Any]) -> None:
    # Python's email package decodes an encoded word when a header is set and writes the CR LF it decoded:
    # this one was a Bcc header in a sent mail before the schema refused encoded words.
    response = await service.post(**{**MAIL, **fields})

    assert response.status_code == 422
    assert "encoded word" in response.text
    assert smtp_sink.received == []


async def test_crafted_values_that_are_accepted_stay_inside_their_header(service: Service, smtp_sink: SmtpSink) -> None:
    crafted = {
        # Quotes, commas and angle brackets in a display name: one recipient with an odd name, not three.
        "to": ['"Eve\\" <x@attacker.example>, Bcc: y@attacker.example" <ada@example.com>'],
        "cc": ["Grace, Bcc: z@attacker.example <grace@example.com>"],
        "reply_to": "Reply <r@example.com>",
        "subject": "Hi \tBcc: v@attacker.example",
        "text": "Body\r\nBcc: body@attacker.example\r\n",
        "metadata": {"X-Injected": "Bcc: meta@attacker.example"},
    }
    response = await service.post(**crafted)
    assert response.status_code == 202, response.text
    await service.wait_for_status(response.json()["id"], "sent")

    [mail] = smtp_sink.received
    assert sorted(mail.rcpt_tos) == ["ada@example.com", "grace@example.com"]
    message = mail.message
    assert {name.lower() for name in message} <= EXPECTED_HEADERS
    assert [a.addr_spec for a in message["To"].addresses] == ["ada@example.com"]
    assert [a.addr_spec for a in message["Cc"].addresses] == ["grace@example.com"]
    assert message["Bcc"] is None
    assert message["Subject"] == crafted["subject"]
    head = mail.data.split(b"\r\n\r\n", 1)[0].decode()
    # Every header line is a header the service wrote or a folded continuation of one.
    for line in head.split("\r\n"):
        assert line[:1] in (" ", "\t") or line.split(":", 1)[0].lower() in EXPECTED_HEADERS, line
    assert "meta@attacker" not in mail.data.decode()
