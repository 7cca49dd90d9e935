"""A request's own sender (`from`) through the real app: the From header and the envelope's MAIL FROM at the SMTP
server, on both outboxes; MAIL_FROM when none is named; every sender outside ALLOWED_FROM (or its other name,
COMPAT_ALLOWED_FROM) refused with a 422 naming `from`, in a request, a batch item and a rendered template."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.delivery import mime
from service.outbox import Notification
from tests.conftest import MAIL, Service, make_settings, running
from tests.postgres import temporary_database
from tests.smtp_sink import SmtpSink

# make_settings' MAIL_FROM is "Notifier <notifier@example.com>": by default, example.com alone is allowed.
BILLING = "Acme Billing <billing@example.com>"


def refusal(response: Any) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    return dict(error)


@pytest.fixture(params=["sqlite", "postgres"])
async def outbox_settings(
    request: pytest.FixtureRequest, tmp_path: Path, smtp_sink: SmtpSink
) -> AsyncIterator[Settings]:
    """The app's settings on a SQLite file, then on a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        yield make_settings(tmp_path, smtp_sink.port)
        return
    async with temporary_database() as url:
        yield make_settings(tmp_path, smtp_sink.port, OUTBOX_URL=url)


async def test_the_mail_goes_out_from_the_requests_sender(outbox_settings: Settings, smtp_sink: SmtpSink) -> None:
    async with running(outbox_settings) as service:
        response = await service.post(**MAIL, **{"from": BILLING})
        assert response.status_code == 202, response.text
        assert response.json()["from"] == BILLING
        sent = await service.wait_for_status(response.json()["id"], "sent")
        # Echoed as asked, from the outbox's row.
        assert sent["from"] == BILLING
        assert "sender" not in sent
        [received] = await smtp_sink.wait_for(1)
    assert received.mail_from == "billing@example.com"
    assert received.message["From"] == BILLING
    assert received.data.startswith(b"From: Acme Billing <billing@example.com>\r\n")
    assert len(received.message.get_all("From") or []) == 1
    assert received.rcpt_tos == ["ada@example.com"]


async def test_without_from_the_mail_goes_out_from_mail_from_as_before(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.post(**MAIL)
    assert response.status_code == 202, response.text
    assert response.json()["from"] is None
    await service.wait_for_status(response.json()["id"], "sent")
    [received] = await smtp_sink.wait_for(1)
    assert received.mail_from == "notifier@example.com"
    assert received.message["From"] == "Notifier <notifier@example.com>"


async def test_a_sender_outside_the_default_domain_is_a_422_naming_from(service: Service, smtp_sink: SmtpSink) -> None:
    error = refusal(await service.post(**MAIL, **{"from": "Mallory <ceo@bank.example>"}))
    assert error["loc"] == ["body", "from"]
    assert error["type"] == "sender_not_allowed"
    assert "sender domain not allowed" in error["msg"]
    assert "ALLOWED_FROM" in error["msg"]
    # A subdomain is another domain: not allowed by its parent.
    assert refusal(await service.post(**MAIL, **{"from": "x@mail.example.com"}))["loc"] == ["body", "from"]
    listed = (await service.client.get("/v1/notifications")).json()["items"]
    assert listed == []


async def test_allowed_from_takes_bare_domains_and_single_addresses(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, ALLOWED_FROM="acme.com, Billing@Other.example")
    async with running(settings) as service:
        # A bare domain: any address at it (its case ignored).
        for sender in ("Acme <hello@acme.com>", "support@ACME.com"):
            assert (await service.post(**MAIL, **{"from": sender})).status_code == 202, sender
        # An address: that one only.
        assert (await service.post(**MAIL, **{"from": "billing@other.example"})).status_code == 202
        assert refusal(await service.post(**MAIL, **{"from": "sales@other.example"}))["loc"] == ["body", "from"]
        # A list replaces the default: MAIL_FROM's domain is then allowed only when listed.
        assert refusal(await service.post(**MAIL, **{"from": "billing@example.com"}))["loc"] == ["body", "from"]
        await smtp_sink.wait_for(3)
    assert sorted(r.mail_from for r in smtp_sink.received) == [
        "billing@other.example",
        "hello@acme.com",
        "support@acme.com",
    ]


def test_compat_allowed_from_is_read_when_allowed_from_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALLOWED_FROM", raising=False)
    monkeypatch.setenv("COMPAT_ALLOWED_FROM", "acme.com")
    assert Settings(_env_file=None).allowed_from() == (frozenset(), frozenset({"acme.com"}))  # type: ignore[call-arg]
    # Both set: ALLOWED_FROM, the service's own name, wins.
    monkeypatch.setenv("ALLOWED_FROM", "billing@other.example")
    assert Settings(_env_file=None).allowed_from() == (frozenset({"billing@other.example"}), frozenset())  # type: ignore[call-arg]


async def test_compat_allowed_from_lets_a_sender_through_the_app(
    tmp_path: Path, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALLOWED_FROM", raising=False)
    monkeypatch.setenv("COMPAT_ALLOWED_FROM", "acme.com")
    async with running(make_settings(tmp_path, smtp_sink.port)) as service:
        response = await service.post(**MAIL, **{"from": "Acme <billing@acme.com>"})
        assert response.status_code == 202, response.text
        await service.wait_for_status(response.json()["id"], "sent")
        [received] = await smtp_sink.wait_for(1)
    assert received.mail_from == "billing@acme.com"


@pytest.mark.parametrize("value", ["example.com, not a domain", "@example.com", "Name <a@example.com>", "a@b@"])
def test_a_bad_allowed_from_stops_the_start(value: str) -> None:
    with pytest.raises(ValidationError, match="ALLOWED_FROM"):
        Settings(_env_file=None, ALLOWED_FROM=value)  # type: ignore[call-arg]


def test_an_empty_allowed_from_means_mail_froms_domain() -> None:
    settings = Settings(_env_file=None, MAIL_FROM="Shop <orders@Shop.example>", ALLOWED_FROM=" , ")  # type: ignore[call-arg]
    assert settings.allowed_from() == (frozenset(), frozenset({"shop.example"}))


@pytest.mark.parametrize(
    "sender",
    [
        "billing@example.com\r\nBcc: victim@evil.example",
        "Acme\nBcc: victim@evil.example <billing@example.com>",
        "=?utf-8?q?Acme=0D=0ABcc:_victim@evil.example?= <billing@example.com>",
        "billing@example.com, other@example.com",
        "not an address",
        "",
    ],
)
async def test_header_injection_and_non_addresses_are_refused(service: Service, sender: str) -> None:
    error = refusal(await service.post(**MAIL, **{"from": sender}))
    assert error["loc"] == ["body", "from"]


async def test_only_the_json_name_from_is_taken(service: Service) -> None:
    error = refusal(await service.post(**MAIL, sender="billing@example.com"))
    assert (error["loc"], error["type"]) == (["body", "sender"], "extra_forbidden")


async def test_a_non_ascii_display_name_goes_the_stdlib_way(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.post(**MAIL, **{"from": "Zoë, Billing <billing@example.com>"})
    assert response.status_code == 202, response.text
    await service.wait_for_status(response.json()["id"], "sent")
    [received] = await smtp_sink.wait_for(1)
    assert received.mail_from == "billing@example.com"
    assert received.message["From"].addresses[0].display_name == "Zoë, Billing"
    assert received.message["From"].addresses[0].addr_spec == "billing@example.com"


def test_a_plain_sender_keeps_the_fast_path() -> None:
    n = Notification(
        id="n", to=["ada@example.com"], subject="Hello", text="Hi", message_id="<n@x.example>", created_at=0
    )
    fast = mime.build_fast_bytes(n, BILLING)
    assert fast is not None
    assert fast == mime.build_stdlib_bytes(n, BILLING)


async def test_batch_items_and_templates_carry_their_sender(service: Service, smtp_sink: SmtpSink) -> None:
    batch = {"notifications": [{**MAIL, "from": BILLING}, {**MAIL, "from": "x@elsewhere.example"}, MAIL]}
    response = await service.client.post("/v1/notifications/batch", json=batch)
    assert response.status_code == 202, response.text
    first, second, third = response.json()["items"]
    assert second["error"]["detail"][0]["loc"] == ["body", "from"]
    # A template request: rendered into a plain one that keeps its `from`.
    rendered = await service.post(
        to=["grace@example.com"],
        template="welcome",
        data={"first_name": "Grace", "email": "grace@example.com", "login_url": "https://example.com/login"},
        **{"from": "Welcome <hi@example.com>"},
    )
    assert rendered.status_code == 202, rendered.text
    assert rendered.json()["from"] == "Welcome <hi@example.com>"
    for notification_id in (first["id"], third["id"], rendered.json()["id"]):
        await service.wait_for_status(notification_id, "sent")
    received = await smtp_sink.wait_for(3)
    assert sorted((r.mail_from, r.message["From"]) for r in received) == [
        ("billing@example.com", BILLING),
        ("hi@example.com", "Welcome <hi@example.com>"),
        ("notifier@example.com", "Notifier <notifier@example.com>"),
    ]


async def test_the_openapi_document_says_from(service: Service) -> None:
    schemas = (await service.client.get("/openapi.json")).json()["components"]["schemas"]
    request_schema = next(s for name, s in schemas.items() if name.startswith("NotificationRequest"))
    assert "from" in request_schema["properties"]
    assert "sender" not in request_schema["properties"]
    assert "from" in schemas["NotificationStatus"]["properties"]
    assert "sender" not in schemas["NotificationStatus"]["properties"]
