"""API_KEYS: /v1 and the tutorial routes need a bearer key when it is set; health stays open; keys stay secret."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.config import Settings
from service.http.auth import matching_key
from service.main import create_app
from tests.conftest import MAIL, captured_events, make_settings, running
from tests.smtp_sink import SmtpSink

KEYS = "first-key-0123456789abcdef,second-key-0123456789abcdef"
WRONG = "wrong-key-0123456789abcdef"


@pytest.fixture
def guarded(tmp_path: Path, smtp_sink: SmtpSink) -> Settings:
    return make_settings(tmp_path, smtp_sink.port, API_KEYS=KEYS)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


PROTECTED = [
    ("POST", "/v1/notifications"),
    ("GET", "/v1/notifications"),
    ("GET", "/v1/notifications/some-id"),
    ("POST", "/v1/notifications/some-id/retry"),
    ("POST", "/v1/notifications/some-id/cancel"),
    ("GET", "/v1/stats"),
    ("POST", "/send-notification/ada@example.com"),
    ("POST", "/email/ada@example.com"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [{}, bearer(WRONG), {"Authorization": "Basic Zmlyc3Qta2V5LTAxMjM0NTY3ODlhYmNkZWY6"}, bearer("")],
    ids=["none", "wrong key", "basic", "empty"],
)
async def test_every_protected_route_is_401_without_a_valid_key(
    guarded: Settings, method: str, path: str, headers: dict[str, str]
) -> None:
    async with running(guarded) as service:
        with captured_events() as events:
            response = await service.client.request(method, path, json=MAIL, headers=headers)
            listing = await service.client.get("/v1/notifications", headers=bearer("second-key-0123456789abcdef"))

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API_KEYS" in response.json()["detail"]
    assert WRONG not in response.text
    assert [e["event"] for e in events if e["event"].startswith("notification")] == []
    assert WRONG not in repr(events)
    assert listing.json()["items"] == []


async def test_a_valid_key_is_let_in_and_health_needs_none(guarded: Settings, smtp_sink: SmtpSink) -> None:
    app = create_app(guarded)
    # Logging is configured by create_app(): capture after it, then start the app.
    with captured_events() as events:
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://service") as client,
        ):
            accepted = await client.post("/v1/notifications", json=MAIL, headers=bearer("first-key-0123456789abcdef"))
            tutorial = await client.post("/email/ada@example.com", headers=bearer("second-key-0123456789abcdef"))
            live = await client.get("/health/live")
            scrape = await client.get("/metrics")
            ready = await client.get("/health/ready")
            await smtp_sink.wait_for(2)

    assert accepted.status_code == 202
    assert tutorial.status_code == 200
    assert live.status_code == ready.status_code == scrape.status_code == 200
    names = [e["event"] for e in events]
    assert "service_started" in names
    assert "notification_accepted" in names
    assert "auth_disabled" not in names
    for key in KEYS.split(","):
        assert key not in repr(events)


async def test_an_open_api_says_so_once_at_start(settings: Settings) -> None:
    app = create_app(settings)
    with captured_events() as events:
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://service") as client,
        ):
            response = await client.post("/v1/notifications", json=MAIL)
            await client.get("/v1/notifications")

    assert response.status_code == 202
    warnings = [e for e in events if e["event"] == "auth_disabled"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert "API_KEYS" in warnings[0]["detail"]


def test_the_comparison_finds_the_key_among_several() -> None:
    keys = KEYS.split(",")
    assert matching_key(keys[1], keys) == keys[1]
    assert matching_key(keys[1][:-1], keys) is None
    assert matching_key(keys[1] + "x", keys) is None
    assert matching_key("", keys) is None


async def test_the_openapi_schema_declares_bearer_auth(guarded: Settings) -> None:
    async with running(guarded) as service:
        schema = (await service.client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    post = schema["paths"]["/v1/notifications"]["post"]
    assert {"401", "409", "413", "422", "429"} <= set(post["responses"])
    assert "401" not in schema["paths"]["/health/live"]["get"]["responses"]


async def test_the_docs_stay_reachable(guarded: Settings) -> None:
    async with running(guarded) as service:
        docs = await service.client.get("/docs")
    assert docs.status_code == 200


def test_httpx_is_what_we_think() -> None:
    # The "empty" case above relies on httpx sending "Bearer " as it is.
    assert httpx.Request("GET", "http://x", headers=bearer("")).headers["authorization"] == "Bearer "
