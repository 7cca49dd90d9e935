"""In Chromium: the activity page keeps itself up to date, except while someone types in its filter; when they
stop, it catches up at once."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.ui.conftest import StartService

# Each starts the service under uvicorn and drives Chromium.
pytestmark = pytest.mark.slow

# The page refreshes every few seconds: a tick must have come and gone within this.
WAIT_MS = 20_000


async def test_the_list_refreshes_but_not_while_typing_in_a_filter(page: Page, start_ui_service: StartService) -> None:
    service = await start_ui_service()
    html = page.locator("html")
    async with httpx.AsyncClient(base_url=service.base_url) as api:
        await page.goto(f"{service.base_url}/ui/")
        await expect(html).to_have_attribute("data-live", "on")

        await api.post("/v1/notifications", json={"to": ["ada@example.com"], "subject": "Arrived", "text": "x"})
        await expect(page.get_by_role("link", name="Arrived")).to_be_visible(timeout=WAIT_MS)

        await page.get_by_label("Recipient").fill("ada@")
        await expect(html).to_have_attribute("data-live", "paused")
        await expect(page.locator("[data-live-state]")).to_have_text("paused while you type")
        await api.post("/v1/notifications", json={"to": ["ada@example.com"], "subject": "While typing", "text": "x"})
        # A refresh came due and was skipped: what was posted meanwhile is not shown, and the field is untouched.
        await expect(html).to_have_attribute("data-skipped", "1", timeout=WAIT_MS)
        await expect(page.get_by_role("link", name="While typing")).to_have_count(0)
        await expect(page.get_by_label("Recipient")).to_have_value("ada@")

        await page.get_by_label("Recipient").fill("")
        await page.get_by_role("heading", name="Activity").click()
        await expect(page.get_by_role("link", name="While typing")).to_be_visible()
        await expect(html).to_have_attribute("data-live", "on")
