"""In Chromium: a mail sent from the form opens its own page, which turns `sent` by itself once the SMTP server
takes it; a refused field says why beside it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from tests.smtp_sink import SmtpSink, free_port
from tests.ui.conftest import StartService

# Each starts the service under uvicorn and drives Chromium.
pytestmark = pytest.mark.slow

WAIT_MS = 20_000


async def test_a_mail_sent_from_the_form_turns_sent_on_its_page(
    page: Page, start_ui_service: StartService, tmp_path: Path
) -> None:
    # No SMTP server yet: the mail waits (retried), so its page is seen before it is sent, not after.
    late_sink = SmtpSink(free_port())
    service = await start_ui_service(SMTP_PORT=late_sink.port)
    try:
        await page.goto(f"{service.base_url}/ui/send")
        await page.get_by_label("To").fill("Ada Lovelace <ada@example.com>")
        await page.get_by_label("Subject").fill("Sent from the page")
        await page.get_by_label("Text").fill("Hello from a browser")
        await page.get_by_role("button", name="Send").click()

        await expect(page).to_have_url(re.compile(r"/ui/notifications/[0-9a-f-]{36}$"))
        badge = page.locator("#summary .badge")
        await expect(badge).to_have_text("queued", timeout=WAIT_MS)
        await expect(page.locator("#timeline")).to_contain_text("failed", timeout=WAIT_MS)

        late_sink.start()
        await expect(badge).to_have_text("sent", timeout=WAIT_MS)
        await expect(page.locator("#timeline")).to_contain_text("250 Message accepted for delivery")
        [mail] = await late_sink.wait_for(1)
        assert mail.message["Subject"] == "Sent from the page"
        assert mail.rcpt_tos == ["ada@example.com"]
    finally:
        late_sink.stop()


async def test_a_refused_address_is_explained_beside_its_field(page: Page, start_ui_service: StartService) -> None:
    service = await start_ui_service()
    await page.goto(f"{service.base_url}/ui/send")
    await page.get_by_label("To").fill("ada@example.com, not-an-address")
    await page.get_by_label("Subject").fill("Hi")
    await page.get_by_label("Text").fill("x")
    await page.get_by_role("button", name="Send").click()

    errors = page.locator("#to-errors")
    await expect(errors).to_contain_text("“not-an-address”: Value error, not a valid e-mail address")
    await expect(page.get_by_label("To")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("To")).to_have_value("ada@example.com, not-an-address")


async def test_a_template_shows_its_variables_as_fields(
    page: Page, start_ui_service: StartService, smtp_sink: SmtpSink
) -> None:
    service = await start_ui_service()
    await page.goto(f"{service.base_url}/ui/send")
    await page.get_by_label("To").fill("ada@example.com")
    await page.get_by_label("From a template").check()
    await expect(page.get_by_label("Subject")).to_be_hidden()
    await page.get_by_label("Template", exact=True).select_option("welcome")
    variables = page.locator('fieldset[data-template="welcome"]')
    await expect(variables).to_be_visible()
    await expect(page.locator('fieldset[data-template="password-reset"]')).to_be_hidden()

    await variables.get_by_label("first_name").fill("Ada")
    await variables.get_by_label("email").fill("ada@example.com")
    await variables.get_by_label("login_url").fill("https://example.com/login")
    await page.get_by_role("button", name="Send").click()

    await expect(page.locator("#summary .badge")).to_have_text("sent", timeout=WAIT_MS)
    await expect(page.locator("h1")).to_have_text("Welcome to Example, Ada!")


async def test_send_at_is_read_in_the_browsers_time_zone(browser: Browser, start_ui_service: StartService) -> None:
    service = await start_ui_service()
    context = await browser.new_context(timezone_id="Asia/Tokyo")  # UTC+9 all year: no daylight saving
    context.set_default_timeout(15_000)
    try:
        page = await context.new_page()
        tomorrow_in_tokyo = (datetime.now(UTC) + timedelta(days=1)).astimezone(timezone(timedelta(hours=9)))
        wall_clock = tomorrow_in_tokyo.replace(hour=9, minute=30, second=0, microsecond=0)
        await page.goto(f"{service.base_url}/ui/send")
        await page.get_by_label("To").fill("ada@example.com")
        await page.get_by_label("Subject").fill("Tomorrow morning in Tokyo")
        await page.get_by_label("Text").fill("x")
        await page.get_by_label("Send at").fill(wall_clock.strftime("%Y-%m-%dT%H:%M"))
        await page.get_by_role("button", name="Send").click()

        await expect(page).to_have_url(re.compile(r"/ui/notifications/[0-9a-f-]{36}$"))
        await expect(page.locator("#summary .badge")).to_have_text("scheduled")
        async with httpx.AsyncClient(base_url=service.base_url) as api:
            status = (await api.get(f"/v1/notifications/{page.url.rpartition('/')[2]}")).json()
        assert datetime.fromisoformat(status["send_at"]) == wall_clock
    finally:
        await context.close()
