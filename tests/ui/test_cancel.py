"""In Chromium: a scheduled mail shows `scheduled` with its time; Cancel stops it, its page says `canceled`, and
the SMTP server never sees it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.smtp_sink import SmtpSink
from tests.ui.conftest import StartService

# Each starts the service under uvicorn and drives Chromium.
pytestmark = pytest.mark.slow

WAIT_MS = 20_000


async def test_a_scheduled_mail_is_canceled_from_its_page(
    page: Page, start_ui_service: StartService, smtp_sink: SmtpSink
) -> None:
    service = await start_ui_service()
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    async with httpx.AsyncClient(base_url=service.base_url) as api:
        body = {"to": ["later@example.com"], "subject": "Tomorrow's digest", "text": "x", "send_at": send_at}
        created = (await api.post("/v1/notifications", json=body)).json()
        # One sent now, so that the sink is known to be listening while the scheduled one is not sent.
        now = await api.post("/v1/notifications", json={"to": ["now@example.com"], "subject": "Now", "text": "x"})
        assert now.status_code == 202

    await page.goto(f"{service.base_url}/ui/?status=scheduled")
    await page.get_by_role("link", name="Tomorrow's digest").click()
    await expect(page.locator("#summary .badge")).to_have_text("scheduled")
    await expect(page.locator("#timeline")).to_contain_text("Scheduled")

    await page.get_by_role("button", name="Cancel").click()

    await expect(page).to_have_url(f"{service.base_url}/ui/notifications/{created['id']}")
    await expect(page.locator("#summary .badge")).to_have_text("canceled", timeout=WAIT_MS)
    await expect(page.locator("#timeline")).to_contain_text("Canceled")
    await expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    await smtp_sink.wait_for(1)
    assert smtp_sink.to("later@example.com") == []
