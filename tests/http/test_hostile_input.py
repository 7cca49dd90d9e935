"""What a hostile or careless client sends is answered with a clear 4xx and a JSON `detail`, never a 500, and
what is accepted can be sent: proven through the real app, outbox and SMTP server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.http.limits import MAX_JSON_DEPTH
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
    # Under SMTPUTF8 the header carries the name and the address as UTF-8 (RFC 6532). The two are sent side by
    # side, so either may arrive first.
    headers = sorted(r.data.split(b"\r\n\r\n", 1)[0] for r in sink.received)
    assert any("\r\nTo: Ñoño Pérez <ñoño@example.com>\r\n".encode() in h + b"\r\n" for h in headers)
    assert any("\r\nTo: ñoño@example.com\r\n".encode() in h + b"\r\n" for h in headers)


# -- JSON nesting -----------------------------------------------------------------------------------------


def nested(levels: int) -> str:
    """`levels` arrays and objects inside one another: [{"a": [{"a": ... 0 ...}]}]."""
    opening, closing = "", ""
    for level in range(levels):
        opening, closing = (opening + '{"a": ', "}" + closing) if level % 2 else (opening + "[", "]" + closing)
    return f"{opening}0{closing}"


def deep_bodies(levels: int) -> dict[str, str]:
    """Bodies whose deepest value sits `levels` levels down (the body's own object is level 1)."""
    mail = json.dumps(MAIL)[:-1]
    template = '{"to": ["ada@example.com"], "template": "welcome", "data": {"first_name": "Ada"'
    return {
        "unknown field": f'{mail}, "x": {nested(levels - 1)}}}',
        "template data": f'{template}, "login_url": "u", "email": "e", "x": {nested(levels - 2)}}}}}',
        "batch item": f'{{"notifications": [{mail}, "x": {nested(levels - 3)}}}]}}',
    }


ROUTES = {"unknown field": "/v1/notifications", "template data": "/v1/notifications", "batch item": "batch"}


def route(kind: str) -> str:
    return "/v1/notifications/batch" if ROUTES[kind] == "batch" else ROUTES[kind]


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 300, 500, 5_000, 100_000])
@pytest.mark.parametrize("kind", list(ROUTES))
async def test_json_nested_deeper_than_the_limit_is_a_422_with_a_json_detail(
    service: Service, kind: str, levels: int
) -> None:
    body = deep_bodies(levels)[kind]
    if levels <= 500:
        json.loads(body)  # well-formed: refused for its depth, not its syntax

    response = await service.client.post(route(kind), content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text[:300]
    [error] = response.json()["detail"]
    assert error["type"] == "json_too_deep"
    assert f"{MAX_JSON_DEPTH} levels" in error["msg"]
    assert len(response.content) < 1000, "the answer echoes the input"


@pytest.mark.parametrize("kind", ["template data", "batch item"])
async def test_json_nested_to_the_limit_is_taken(service: Service, kind: str) -> None:
    body = deep_bodies(MAX_JSON_DEPTH)[kind]
    response = await service.client.post(route(kind), content=body, headers={"Content-Type": "application/json"})

    # The template item is accepted; the batch item is judged on its own (an unknown field, so refused).
    assert response.status_code == 202, response.text[:500]


async def test_brackets_inside_strings_are_not_nesting(service: Service) -> None:
    text = '[{"\\[' * 300  # in JSON [{\"\\[: escaped quotes and backslashes amid the brackets
    response = await service.post(**{**MAIL, "text": text, "metadata": {"k": "{" * 1000}})

    assert response.status_code == 202, response.text[:300]
    assert response.json()["metadata"] == {"k": "{" * 1000}


async def test_a_deep_body_sent_in_chunks_is_refused_too(service: Service) -> None:
    body = deep_bodies(500)["unknown field"].encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    response = await service.client.post(
        "/v1/notifications", content=chunks(), headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_too_deep"
