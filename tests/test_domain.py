"""The shared words: a Refusal reads back from the JSON it is stored and shown as."""

from __future__ import annotations

from service.domain import Refusal


def test_a_refusal_is_stored_and_shown_as_address_code_and_message() -> None:
    refusal = Refusal(address="grey@example.com", code=451, message="greylisted")

    assert refusal.to_json() == {"address": "grey@example.com", "code": 451, "message": "greylisted"}
    assert Refusal.from_json(refusal.to_json()) == refusal


def test_4xx_is_refused_for_now_and_5xx_for_good() -> None:
    assert [(r.for_now, r.for_good) for r in (Refusal("a", 451, ""), Refusal("b", 550, ""), Refusal("c", 0, ""))] == [
        (True, False),
        (False, True),
        (False, False),
    ]
