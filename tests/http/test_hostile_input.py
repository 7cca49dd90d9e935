"""What a hostile or careless client sends is answered with a clear 4xx and a JSON `detail`, never a 500, and
what is accepted can be sent: proven through the real app, outbox and SMTP server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import MAIL, Service, make_settings, running
from tests.smtp_sink import SmtpSink

WELCOME = {"first_name": "Ada", "email": "ada@example.com", "login_url": "https://example.com/login"}

WITH_NUL = [
    {**MAIL, "text": "Hi\x00Ada"},
    {**MAIL, "html": "<p>Hi\x00</p>"},
    {"to": ["ada@example.com"], "template": "welcome", "data": {**WELCOME, "login_url": "https://x\x00"}},
    {**MAIL, "metadata": {"user": "a\x00b"}},
]
WITH_NUL_IDS = ["text", "html", "template data", "metadata"]


@pytest.mark.parametrize("body", WITH_NUL, ids=WITH_NUL_IDS)
async def test_a_nul_in_a_body_is_a_422_and_nothing_is_sent(
    service: Service, smtp_sink: SmtpSink, body: dict[str, object]
) -> None:
    response = await service.post(**body)
    batch = await service.client.post("/v1/notifications/batch", json={"notifications": [body]})

    assert response.status_code == 422
    assert "NUL" in response.text
    assert batch.status_code == 202
    assert "NUL" in str(batch.json()["items"][0]["error"])
    assert (await service.client.get("/v1/notifications")).json()["items"] == []
    assert smtp_sink.received == []


async def test_a_nul_is_a_422_on_postgresql_too(tmp_path: Path, postgres_url: str) -> None:
    # PostgreSQL cannot store a NUL in text: the write failed, as a 500, before the request refused it.
    async with running(make_settings(tmp_path, 25, OUTBOX_URL=postgres_url)) as service:
        answers = [await service.post(**body) for body in WITH_NUL]

    assert [answer.status_code for answer in answers] == [422] * len(WITH_NUL)


async def test_a_local_part_over_64_octets_is_a_422(service: Service) -> None:
    response = await service.post(**{**MAIL, "to": ["Ada <" + "a" * 65 + "@example.com>"]})

    assert response.status_code == 422
    assert "64 octets" in response.text


async def test_a_non_ascii_local_part_is_sent_with_or_without_a_display_name(tmp_path: Path) -> None:
    sink = SmtpSink(smtputf8=True).start()
    try:
        async with running(make_settings(tmp_path, sink.port)) as service:
            bare = await service.post(**{**MAIL, "to": ["ñoño@example.com"]})
            named = await service.post(**{**MAIL, "to": ["Ñoño Pérez <ñoño@example.com>"]})
            assert (bare.status_code, named.status_code) == (202, 202), named.text
            assert named.json()["to"] == ["Ñoño Pérez <ñoño@example.com>"]
            await service.wait_for_status(bare.json()["id"], "sent")
            await service.wait_for_status(named.json()["id"], "sent")
    finally:
        sink.stop()

    assert [r.rcpt_tos for r in sink.received] == [["ñoño@example.com"], ["ñoño@example.com"]]
    # Under SMTPUTF8 the header carries the name and the address as UTF-8 (RFC 6532).
    assert "\r\nTo: Ñoño Pérez <ñoño@example.com>\r\n".encode() in sink.received[1].data
