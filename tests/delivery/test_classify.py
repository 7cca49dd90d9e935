"""What a failed send means, as aiosmtplib reports it: the SMTP code reaches the dispatcher as an int, with
the refused recipients as Refusals."""

from __future__ import annotations

import aiosmtplib
import pytest

from service.delivery.classify import classify, hard_bounces, is_hard_bounce
from service.domain import Bounce, Refusal, SendFailed


def test_a_reply_code_is_carried_as_an_int() -> None:
    assert classify(aiosmtplib.SMTPDataError(452, "4.3.1 out of storage")).outcome == SendFailed(
        message="452 4.3.1 out of storage", transient=True, code=452
    )
    assert classify(aiosmtplib.SMTPDataError(554, "5.7.1 rejected")).outcome == SendFailed(
        message="554 5.7.1 rejected", transient=False, code=554
    )


def test_every_recipient_refused_carries_one_refusal_each() -> None:
    failed = classify(
        aiosmtplib.SMTPRecipientsRefused(
            [
                aiosmtplib.SMTPRecipientRefused(451, "greylisted", "grey@example.com"),
                aiosmtplib.SMTPRecipientRefused(550, "no such user", "gone@example.com"),
            ]
        )
    ).outcome

    assert failed.transient
    assert failed.code is None
    assert failed.refused == (
        Refusal("grey@example.com", 451, "greylisted"),
        Refusal("gone@example.com", 550, "no such user"),
    )


def test_a_lost_connection_has_no_code() -> None:
    failed = classify(aiosmtplib.SMTPServerDisconnected("gone")).outcome

    assert (failed.transient, failed.code) == (True, None)


@pytest.mark.parametrize(
    ("code", "message", "hard"),
    [
        (550, "5.1.1 <gone@example.com>: Recipient address rejected: User unknown", True),
        (550, "5.1.10 Recipient address has null MX", True),
        (550, "5.2.1 mailbox disabled", True),
        (553, "5.1.2 bad destination system address", True),
        # A full mailbox, a policy refusal, a 4xx, a reply without an enhanced code: not the address's death.
        (552, "5.2.2 mailbox full", False),
        (550, "5.7.1 rejected by policy", False),
        (550, "5.1.100 not a registered code", False),
        (450, "4.1.1 try later", False),
        (550, "no such user", False),
    ],
)
def test_a_hard_bounce_is_a_5xx_whose_enhanced_status_says_the_mailbox_is_gone(
    code: int, message: str, hard: bool
) -> None:
    assert is_hard_bounce(Refusal("a@example.com", code, message)) is hard


def test_hard_bounces_carry_the_reply_and_the_setting() -> None:
    refused = [Refusal("gone@example.com", 550, "5.1.1 unknown"), Refusal("busy@example.com", 452, "4.2.2 full")]
    assert hard_bounces(refused, suppress=False) == [Bounce("gone@example.com", "550 5.1.1 unknown", suppress=False)]
