"""SMTP_PASSWORD and API_KEYS never show: not in the settings' repr, config errors, logs or error bodies,
not even when the SMTP server refuses the login."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from pydantic import ValidationError

from service.config import Settings, describe_errors
from tests.conftest import MAIL, captured_events, make_settings, running
from tests.smtp_sink import RecordingHandler, free_port

PASSWORD = "Pa55-w0rd-that-must-not-leak"
API_KEY = "api-key-that-must-not-leak-0123"


def secret_forms(user: str) -> list[str]:
    """The password as it is and as SMTP AUTH PLAIN and LOGIN put it on the wire."""
    return [
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode(),
    ]


def test_settings_repr_and_str_hide_the_secrets(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, 25, SMTP_USERNAME="relay", SMTP_PASSWORD=PASSWORD, API_KEYS=API_KEY)
    for shown in (repr(settings), str(settings), repr(settings.model_dump())):
        assert PASSWORD not in shown
        assert API_KEY not in shown
    assert settings.api_keys() == [API_KEY]


@pytest.mark.parametrize("api_keys", ["short-secret", f"{API_KEY},tiny-Xq7", f"{API_KEY} Zq9-Wv8-space"])
def test_a_bad_api_key_is_refused_at_start_without_echoing_it(api_keys: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, API_KEYS=api_keys)  # type: ignore[call-arg]
    [line] = describe_errors(caught.value)
    assert line.startswith("config error: API_KEYS: every key must be at least 16")
    for part in api_keys.replace(",", " ").split():
        assert part not in line


def test_the_examples_placeholder_key_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, API_KEYS="replace-with-openssl-rand-hex-32")  # type: ignore[call-arg]
    [line] = describe_errors(caught.value)
    assert "placeholder" in line
    assert "replace-with-openssl" not in line


@pytest.fixture
def auth_smtp_server() -> Iterator[int]:
    """An SMTP server that offers AUTH on a plain connection and refuses every login."""

    def refuse(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False)

    port = free_port()
    controller = Controller(
        RecordingHandler(),
        hostname="127.0.0.1",
        port=port,
        ready_timeout=10,
        authenticator=refuse,
        auth_require_tls=False,
    )
    controller.start()
    yield port
    controller.stop()


async def test_a_refused_smtp_login_leaks_no_password(tmp_path: Path, auth_smtp_server: int) -> None:
    settings = make_settings(
        tmp_path,
        auth_smtp_server,
        SMTP_USERNAME="relay-user",
        SMTP_PASSWORD=PASSWORD,
        API_KEYS=API_KEY,
        MAX_ATTEMPTS=2,
        LOG_LEVEL="DEBUG",
    )
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with running(settings) as service:
        with captured_events() as events:
            response = await service.client.post("/v1/notifications", json=MAIL, headers=headers)
            notification_id = response.json()["id"]
            service.client.headers.update(headers)
            failed = await service.wait_for_status(notification_id, "failed")
            listing = (await service.client.get("/v1/notifications")).text
            unauthorized = (
                await service.client.post("/v1/notifications", json=MAIL, headers={"Authorization": "x"})
            ).text

    assert "535" in failed["last_error"]
    assert [e["event"] for e in events if e["event"] == "notification_failed"] == ["notification_failed"]
    shown = [repr(events), repr(failed), listing, unauthorized]
    for form in [*secret_forms("relay-user"), API_KEY]:
        for text in shown:
            assert form not in text
