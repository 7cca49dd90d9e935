"""What a failed send means, as aiosmtplib reports it: the SMTP code reaches the dispatcher as an int, with
the refused recipients as Refusals."""

from __future__ import annotations

import aiosmtplib

from service.delivery.classify import classify
from service.domain import Refusal, SendFailed


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
