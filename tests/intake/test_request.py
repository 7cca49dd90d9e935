"""What a notification request may hold: addresses as SMTP takes them, bodies that can go on the wire."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.intake.request import NotificationRequest, normalize_address, split_addresses


@pytest.mark.parametrize(
    "address",
    [
        "a" * 65 + "@example.com",
        # 33 characters, 66 octets in UTF-8: RFC 5321 counts octets.
        "ü" * 33 + "@example.com",
        "Ada <" + "a" * 65 + "@example.com>",
    ],
)
def test_a_local_part_over_64_octets_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="64 octets"):
        normalize_address(address)


def test_a_local_part_of_64_octets_is_taken() -> None:
    assert normalize_address("a" * 64 + "@example.com") == "a" * 64 + "@example.com"
    assert normalize_address("ü" * 32 + "@example.com") == "ü" * 32 + "@example.com"


def test_a_non_ascii_local_part_is_taken_with_or_without_a_display_name() -> None:
    assert normalize_address("ñoño@example.com") == "ñoño@example.com"
    assert normalize_address("Ñoño Pérez <ñoño@example.com>") == "Ñoño Pérez <ñoño@example.com>"
    # A display name with specials is quoted, as for an ASCII address.
    assert normalize_address("Pérez, Ñoño <ñoño@example.com>") == '"Pérez, Ñoño" <ñoño@example.com>'


@pytest.mark.parametrize("field", ["text", "html"])
def test_a_nul_in_a_body_is_refused(field: str) -> None:
    with pytest.raises(ValidationError, match="NUL") as caught:
        NotificationRequest.model_validate({"to": ["ada@example.com"], "subject": "Hi", field: "a\x00b"})
    assert caught.value.errors()[0]["loc"] == (field,)


def test_from_is_dumped_only_when_given_so_an_older_bodys_fingerprint_stays() -> None:
    plain = {"to": ["ada@example.com"], "subject": "Hi", "text": "Hi"}
    assert "from" not in NotificationRequest.model_validate(plain).model_dump(mode="json")
    with_sender = NotificationRequest.model_validate({**plain, "from": "Billing <billing@example.com>"})
    assert with_sender.sender == "Billing <billing@example.com>"
    assert with_sender.model_dump(mode="json")["from"] == "Billing <billing@example.com>"


def test_addresses_split_at_the_given_separators_outside_quotes_and_angle_brackets() -> None:
    typed = '"Lovelace, Ada" <ada@example.com>\nbob@example.com, <odd,part@example.com>'
    assert split_addresses(typed, ",\n") == [
        '"Lovelace, Ada" <ada@example.com>',
        "bob@example.com",
        "<odd,part@example.com>",
    ]
    assert split_addresses("a@example.com\nb@example.com") == ["a@example.com\nb@example.com"]
