"""In Chromium: a mail the SMTP server refuses for good shows `failed` with the server's reply; Retry queues it
again and its page follows it to `sent`."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.smtp_sink import SmtpSink
from tests.ui.conftest import StartService

# Each starts the service under uvicorn and drives Chromium.
pytestmark = pytest.mark.slow

WAIT_MS = 20_000


async def test_a_failed_mail_is_retried_from_its_page(
    page: Page, start_ui_service: StartService, smtp_sink: SmtpSink
) -> None:
    smtp_sink.handler.refuse["bounce@example.com"] = "550 5.1.1 <bounce@example.com>: no such user"
    service = await start_ui_service()
    async with httpx.AsyncClient(base_url=service.base_url) as api:
        body = {"to": ["bounce@example.com"], "subject": "Bounces", "text": "x"}
        created = (await api.post("/v1/notifications", json=body)).json()

    await page.goto(f"{service.base_url}/ui/?status=failed")
    await page.get_by_role("link", name="Bounces").click()
    await expect(page.locator("#summary .badge")).to_have_text("failed", timeout=WAIT_MS)
    await expect(page.locator("#timeline")).to_contain_text("550 5.1.1 <bounce@example.com>: no such user")

    del smtp_sink.handler.refuse["bounce@example.com"]
    await page.get_by_role("button", name="Retry").click()

    await expect(page).to_have_url(f"{service.base_url}/ui/notifications/{created['id']}")
    await expect(page.locator("#summary .badge")).to_have_text("sent", timeout=WAIT_MS)
    await expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    assert smtp_sink.to("bounce@example.com")
