"""Templated notifications through the real app: rendered before the 202, every way to get it wrong a clear 422."""

from __future__ import annotations

from typing import Any

from tests.conftest import Service
from tests.smtp_sink import SmtpSink

WELCOME = {
    "to": ["ada@example.com"],
    "template": "welcome",
    "data": {"first_name": "Ada", "email": "ada@example.com", "login_url": "https://example.com/login?a=1&b=2"},
}


def messages(response: Any) -> str:
    return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in response.json()["detail"])


async def test_a_template_request_is_rendered_and_sent(service: Service, smtp_sink: SmtpSink) -> None:
    response = await service.post(**WELCOME)

    assert response.status_code == 202, response.text
    assert response.json()["subject"] == "Welcome to Example, Ada!"
    await service.wait_for_status(response.json()["id"], "sent")
    message = smtp_sink.received[0].message
    assert message["Subject"] == "Welcome to Example, Ada!"
    parts = {part.get_content_type(): part.get_content() for part in message.iter_parts()}
    assert "https://example.com/login?a=1&b=2" in parts["text/plain"]
    assert 'href="https://example.com/login?a=1&amp;b=2"' in parts["text/html"]


async def test_a_missing_variable_is_a_422_naming_it(service: Service) -> None:
    data = {k: v for k, v in WELCOME["data"].items() if k != "login_url"}  # type: ignore[attr-defined]
    response = await service.post(**{**WELCOME, "data": data})

    assert response.status_code == 422
    assert "login_url" in messages(response)
    assert response.json()["detail"][0]["loc"] == ["body", "data"]


async def test_an_unknown_template_is_a_422_listing_the_known_ones(service: Service) -> None:
    response = await service.post(**{**WELCOME, "template": "nope"})

    assert response.status_code == 422
    assert "no template 'nope'" in messages(response)
    assert "welcome" in messages(response)


async def test_both_forms_at_once_or_neither_is_a_422(service: Service) -> None:
    both = await service.post(**WELCOME, subject="Hi", text="x")
    neither = await service.post(to=["ada@example.com"])
    data_alone = await service.post(to=["ada@example.com"], subject="Hi", text="x", data={"a": 1})

    assert [r.status_code for r in (both, neither, data_alone)] == [422, 422, 422]
    assert "not both" in messages(both)
    assert "template" in messages(neither)
    assert "`data` goes with `template`" in messages(data_alone)


async def test_a_rendered_subject_with_a_line_break_is_a_422(service: Service) -> None:
    data = {**WELCOME["data"], "first_name": "Ada\r\nBcc: victim@example.com"}  # type: ignore[dict-item]
    response = await service.post(**{**WELCOME, "data": data})

    assert response.status_code == 422
    assert "subject" in messages(response)
    assert "CR, LF, NUL" in messages(response)


async def test_templates_are_listed_with_their_variables(service: Service) -> None:
    response = await service.client.get("/v1/templates")

    assert response.status_code == 200
    assert response.json() == [
        {"name": "password-reset", "variables": ["email", "expires_in_minutes", "first_name", "reset_url"]},
        {"name": "welcome", "variables": ["email", "first_name", "login_url", "product"]},
    ]
