"""In Chromium, with API_KEYS set: the page asks for a key, refuses a wrong one, keeps only a signed proof of the
right one in an HttpOnly, SameSite=Strict cookie, and forgets it at log-out."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Page, expect

from service.http.ui.access import SESSION_COOKIE
from tests.ui.conftest import StartService

# Each starts the service under uvicorn and drives Chromium.
pytestmark = pytest.mark.slow

KEY = "browser-key-0123456789abcdef"


async def test_a_key_logs_in_a_wrong_one_does_not_and_log_out_forgets(
    page: Page, start_ui_service: StartService
) -> None:
    service = await start_ui_service(API_KEYS=KEY)
    await page.goto(f"{service.base_url}/ui/jobs")
    await expect(page).to_have_url(f"{service.base_url}/ui/login?next=/ui/jobs")
    await expect(page.get_by_role("navigation", name="Sections")).to_have_count(0)

    await page.get_by_label("API key").fill("wrong-key-0123456789abcdef")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#key-errors")).to_have_text("That key is not one of the keys in API_KEYS.")
    assert [c for c in await page.context.cookies() if c["name"] == SESSION_COOKIE] == []

    await page.get_by_label("API key").fill(KEY)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{service.base_url}/ui/jobs")
    await expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    [session] = [c for c in await page.context.cookies() if c["name"] == SESSION_COOKIE]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert KEY not in session["value"]
    # Script on the page cannot read it.
    assert SESSION_COOKIE not in await page.evaluate("document.cookie")
    # The mail's sandboxed frame is loaded with the session too.
    async with httpx.AsyncClient(base_url=service.base_url, headers={"Authorization": f"Bearer {KEY}"}) as api:
        body = {"to": ["ada@example.com"], "subject": "Framed", "html": "<h2>Inside the frame</h2>"}
        created = (await api.post("/v1/notifications", json=body)).json()
    await page.goto(f"{service.base_url}/ui/notifications/{created['id']}")
    frame = page.frame_locator("iframe.mail-html")
    await expect(frame.get_by_role("heading", name="Inside the frame")).to_be_visible()

    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(f"{service.base_url}/ui/login")
    await page.goto(f"{service.base_url}/ui/")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
