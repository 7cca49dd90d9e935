"""The accept path's copy of the suppression list: which recipients it finds, and how it narrows an envelope."""

from __future__ import annotations

import time

import pytest

from service.events.suppressions import SUPPRESSED_CODE, SuppressionList, envelope_address
from service.intake.request import normalize_address
from service.outbox import Notification


@pytest.mark.parametrize(
    ("written", "spec"),
    [
        ('"Ada, L." <ada@example.com>', "ada@example.com"),
        ('"a <b@c.d>" <e@f.g>', "e@f.g"),
        ("Bob <bob@EXAMPLE.com>", "bob@example.com"),
        ("x@y.org", "x@y.org"),
    ],
)
def test_the_envelope_address_of_a_normalized_recipient(written: str, spec: str) -> None:
    assert envelope_address(normalize_address(written)) == spec


def test_narrowing_leaves_the_suppressed_out_of_the_envelope_and_lists_them() -> None:
    copy = SuppressionList(store=None, refresh_seconds=1)  # type: ignore[arg-type]
    copy._keys = frozenset({"Gone@example.com"})
    notification = Notification(
        id="n",
        to=["ada@example.com", "Ada@Example.com"],
        cc=["Gone <Gone@EXAMPLE.com>"],
        bcc=["gone@example.com"],
        subject="s",
        message_id="m",
        created_at=time.time(),
    )
    assert copy.narrow(notification) == ["Gone@EXAMPLE.com"]
    # `gone@` is another mailbox than `Gone@`; one RCPT per address, as delivery makes them.
    assert notification.envelope == ["ada@example.com", "gone@example.com"]
    assert [(r.address, r.code) for r in notification.refused_recipients] == [("Gone@EXAMPLE.com", SUPPRESSED_CODE)]
