"""The mail policy that reuses header classes builds exactly the bytes the stdlib's default policy builds."""

from __future__ import annotations

import email.policy
import re

import pytest
from aiosmtplib.email import flatten_message

from service.delivery import mime
from service.outbox import Notification

BOUNDARY = re.compile(rb"===============\d+==")


@pytest.mark.parametrize(
    "notification",
    [
        Notification(id="1", to=["ada@example.com"], subject="Hello", text="Hi", message_id="<1@x>", created_at=1.0),
        Notification(
            id="2",
            to=["Ada Lovelace <ada@example.com>", "Zoë Ünïcode <z@example.com>"],
            cc=["c@example.com"],
            reply_to="Réponse <r@example.com>",
            subject="Grüße " + "long subject " * 12,
            text="Héllo\n" * 3,
            html="<p>Hé</p>",
            message_id="<2@x>",
            created_at=2.0,
        ),
    ],
    ids=["plain", "non-ascii-multipart"],
)
def test_messages_are_byte_identical_to_the_default_policy(
    notification: Notification, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = flatten_message(mime.build_message(notification, "Notifier <notifier@example.com>"))
    monkeypatch.setattr(mime, "MAIL_POLICY", email.policy.default)
    stdlib = flatten_message(mime.build_message(notification, "Notifier <notifier@example.com>"))

    assert BOUNDARY.sub(b"B", ours) == BOUNDARY.sub(b"B", stdlib)


def test_header_injection_is_still_refused() -> None:
    notification = Notification(
        id="3",
        to=["ada@example.com"],
        subject="x\r\nBcc: eve@example.com",
        text="Hi",
        message_id="<3@x>",
        created_at=1.0,
    )
    with pytest.raises(ValueError, match=r"linefeed|newline|CR|LF"):
        mime.build_message(notification, "notifier@example.com")
