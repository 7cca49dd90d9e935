"""Who may use the page: open like the API without API_KEYS; with them a login, a signed expiring cookie that
never holds the key, a log-out, and a CSRF token on every form that changes something."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.http.ui import throttle
from service.http.ui.access import SESSION_COOKIE, SESSION_SECONDS, issue_session, session_key
from tests.conftest import MAIL, Service, captured_events, make_settings, running
from tests.http.ui.forms import csrf, csrf_of, text_of
from tests.smtp_sink import SmtpSink

KEY = "page-key-0123456789abcdef"
OTHER = "other-key-0123456789abcdef"
WRONG = "wrong-key-0123456789abcdef"

# Every page that shows data or changes something; none may answer without a session when API_KEYS is set.
PAGES = [
    ("GET", "/ui/"),
    ("GET", "/ui/send"),
    ("POST", "/ui/send"),
    ("GET", "/ui/jobs"),
    ("POST", "/ui/jobs"),
    ("GET", "/ui/jobs/some-id"),
    ("GET", "/ui/jobs/some-id/errors.csv"),
    ("GET", "/ui/notifications/some-id"),
    ("GET", "/ui/notifications/some-id/html"),
    ("POST", "/ui/notifications/some-id/retry"),
    ("POST", "/ui/notifications/some-id/cancel"),
]


@pytest.fixture
def guarded(tmp_path: Path, smtp_sink: SmtpSink) -> Settings:
    return make_settings(tmp_path, smtp_sink.port, API_KEYS=f"{KEY},{OTHER}")


async def log_in(service: Service, key: str = KEY, target: str = "/ui/") -> None:
    login = await service.client.get(f"/ui/login?next={target}")
    response = await service.client.post("/ui/login", data={"key": key, "next": target, "csrf": csrf_of(login)})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == target


@pytest.mark.parametrize(("method", "path"), PAGES)
async def test_every_page_asks_for_a_login_when_api_keys_is_set(guarded: Settings, method: str, path: str) -> None:
    async with running(guarded) as service:
        response = await service.client.request(method, path)

    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/login?next=")
    assert "some-id" not in response.text


async def test_a_login_with_a_key_opens_the_page_and_its_cookie_holds_no_key(guarded: Settings) -> None:
    async with running(guarded) as service:
        with captured_events() as events:
            await log_in(service, OTHER, "/ui/jobs")
        cookie = service.client.cookies[SESSION_COOKIE]
        page = await service.client.get("/ui/")

    assert page.status_code == 200
    assert "Log out" in page.text
    assert KEY not in cookie
    assert OTHER not in cookie
    assert [e["event"] for e in events if e["event"].startswith("ui_")] == ["ui_logged_in"]
    assert OTHER not in repr(events)


async def test_the_session_cookie_is_httponly_strict_and_secure_over_https(guarded: Settings) -> None:
    async with running(guarded) as service:
        service.client.base_url = "https://service"
        login = await service.client.get("/ui/login")
        response = await service.client.post("/ui/login", data={"key": KEY, "csrf": csrf_of(login), "next": "/ui/"})

    [session] = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{SESSION_COOKIE}=")]
    attributes = {part.strip().split("=")[0].lower() for part in session.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in session.lower()
    assert f"max-age={SESSION_SECONDS}" in session.lower()


async def test_over_plain_http_the_cookie_is_not_marked_secure(guarded: Settings) -> None:
    async with running(guarded) as service:
        login = await service.client.get("/ui/login")
        response = await service.client.post("/ui/login", data={"key": KEY, "csrf": csrf_of(login), "next": "/ui/"})

    assert "secure" not in response.headers["set-cookie"].lower()


async def test_a_wrong_key_is_refused_and_logged_without_the_key(guarded: Settings) -> None:
    async with running(guarded) as service:
        login = await service.client.get("/ui/login")
        with captured_events() as events:
            response = await service.client.post(
                "/ui/login", data={"key": WRONG, "csrf": csrf_of(login), "next": "/ui/"}
            )
        after = await service.client.get("/ui/")

    assert response.status_code == 401
    assert "not one of the keys in API_KEYS" in text_of(response)
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert after.status_code == 303
    assert [e["event"] for e in events if e["event"].startswith("ui_")] == ["ui_login_refused"]
    assert WRONG not in repr(events)
    assert WRONG not in response.text


def test_a_session_is_signed_and_expires() -> None:
    now = time.time()
    value = issue_session(KEY, now)

    assert session_key(value, [OTHER, KEY], now) == KEY
    assert session_key(value, [OTHER, KEY], now + SESSION_SECONDS + 1) is None
    # The key it was made for is no longer configured: the session ends with it.
    assert session_key(value, [OTHER], now) is None
    expires, key_id, signature = value.split(".")
    assert session_key(f"{int(expires) + 3600}.{key_id}.{signature}", [KEY], now) is None
    assert session_key(f"{expires}.{key_id}.{'0' * len(signature)}", [KEY], now) is None
    assert session_key(f"{expires}.{key_id}", [KEY], now) is None
    assert session_key("", [KEY], now) is None


async def test_a_forged_or_expired_cookie_is_sent_to_the_login(guarded: Settings) -> None:
    async with running(guarded) as service:
        for value in (issue_session(WRONG, time.time()), issue_session(KEY, time.time() - SESSION_SECONDS - 5)):
            service.client.cookies.set(SESSION_COOKIE, value, path="/ui")
            response = await service.client.get("/ui/")
            assert response.status_code == 303, value


async def test_log_out_ends_the_session(guarded: Settings) -> None:
    async with running(guarded) as service:
        await log_in(service)
        page = await service.client.get("/ui/")
        response = await service.client.post("/ui/logout", data={"csrf": csrf_of(page)})
        after = await service.client.get("/ui/")

    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login"
    assert after.status_code == 303


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/ui/", "javascript:alert(1)", "/ui/\\evil", "/elsewhere"]
)
async def test_after_a_login_the_page_never_leads_to_another_site(guarded: Settings, target: str) -> None:
    async with running(guarded) as service:
        login = await service.client.get("/ui/login")
        response = await service.client.post("/ui/login", data={"key": KEY, "next": target, "csrf": csrf_of(login)})

    assert response.headers["location"] == "/ui/"


async def test_without_api_keys_the_page_is_open_and_says_so(service: Service) -> None:
    page = await service.client.get("/ui/")
    login = await service.client.get("/ui/login")

    assert page.status_code == 200
    assert "API_KEYS is empty" in text_of(page)
    assert "Log out" not in page.text
    assert login.status_code == 303


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/ui/send", {"to": "ada@example.com", "subject": "Hi", "text": "x"}),
        ("/ui/notifications/some-id/retry", {}),
        ("/ui/notifications/some-id/cancel", {}),
        ("/ui/logout", {}),
    ],
)
async def test_a_form_without_its_token_changes_nothing(service: Service, path: str, data: dict[str, str]) -> None:
    token = await csrf(service.client)
    missing = await service.client.post(path, data=data)
    wrong = await service.client.post(path, data={**data, "csrf": token[:-2] + "xx"})
    cross_site = await service.client.post(path, data={**data, "csrf": token}, headers={"Sec-Fetch-Site": "cross-site"})
    listed = await service.client.get("/v1/notifications")

    assert [missing.status_code, wrong.status_code, cross_site.status_code] == [403, 403, 403]
    assert "security token" in text_of(missing)
    assert listed.json()["items"] == []


async def test_a_token_is_bound_to_its_browser(service: Service) -> None:
    token = await csrf(service.client)
    # Another browser: a CSRF cookie of its own, so the first one's token is worth nothing there.
    service.client.cookies.clear()
    await service.client.get("/ui/send")
    response = await service.client.post("/ui/send", data={**MAIL, "to": "ada@example.com", "csrf": token})

    assert response.status_code == 403


async def test_a_login_form_needs_its_token_too(guarded: Settings) -> None:
    async with running(guarded) as service:
        response = await service.client.post("/ui/login", data={"key": KEY, "next": "/ui/"})

    assert response.status_code == 403
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")


async def test_a_logged_in_token_does_not_outlive_its_session(guarded: Settings) -> None:
    async with running(guarded) as service:
        await log_in(service)
        token = await csrf(service.client)
        service.client.cookies.delete(SESSION_COOKIE)
        await log_in(service, OTHER)
        response = await service.client.post("/ui/send", data={**MAIL, "to": "ada@example.com", "csrf": token})

    assert response.status_code == 403


async def test_too_many_wrong_keys_from_one_address_are_refused_for_a_while(
    guarded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(throttle, "LOGIN_FAILURES", 3)
    monkeypatch.setattr(throttle, "LOGIN_PERIOD_SECONDS", 0.6)
    async with running(guarded) as service:
        login = await service.client.get("/ui/login")
        form = {"csrf": csrf_of(login), "next": "/ui/"}
        wrong = [(await service.client.post("/ui/login", data={**form, "key": WRONG})).status_code for _ in range(3)]
        with captured_events() as events:
            braked = await service.client.post("/ui/login", data={**form, "key": KEY})
        # Another address is not held back by this one's mistakes.
        elsewhere = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app, client=("10.0.0.2", 4321)), base_url="http://service"
        )
        async with elsewhere:
            other_login = await elsewhere.get("/ui/login")
            other = await elsewhere.post("/ui/login", data={"csrf": csrf_of(other_login), "next": "/ui/", "key": KEY})
        # The bucket drains: the right key gets in again, without a restart.
        deadline = time.monotonic() + 20
        while (late := await service.client.post("/ui/login", data={**form, "key": KEY})).status_code == 429:
            assert time.monotonic() < deadline, "the login stayed throttled"
            await asyncio.sleep(0.05)

    assert wrong == [401, 401, 401]
    assert braked.status_code == 429
    assert int(braked.headers["retry-after"]) >= 1
    assert "Too many wrong keys" in text_of(braked)
    assert SESSION_COOKIE not in braked.headers.get("set-cookie", "")
    assert [e["event"] for e in events if e["event"].startswith("ui_")] == ["ui_login_throttled"]
    assert other.status_code == 303
    assert late.status_code == 303
