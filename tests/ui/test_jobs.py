"""In Chromium: a CSV uploaded with a template becomes a job whose bar fills as its mail goes out, with its
rejected rows listed and downloadable as errors.csv."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.smtp_sink import SmtpSink, free_port
from tests.ui.conftest import StartService

# Each starts the service under uvicorn and drives Chromium.
pytestmark = pytest.mark.slow

WAIT_MS = 30_000
ROWS = 40


async def test_a_csv_jobs_bar_reaches_the_end(page: Page, start_ui_service: StartService, tmp_path: Path) -> None:
    people = tmp_path / "people.csv"
    lines = ["email,first_name,login_url", "not-an-address,Nobody,https://example.com/login"]
    lines += [f"person{i}@example.com,Person {i},https://example.com/login" for i in range(ROWS - 1)]
    people.write_text("\r\n".join(lines) + "\r\n")
    # The SMTP server comes up only once the page shows the job waiting: the bar is seen filling, not only full.
    late_sink = SmtpSink(free_port())
    service = await start_ui_service(SMTP_PORT=late_sink.port, JOB_CHUNK_ROWS=10)
    try:
        await page.goto(f"{service.base_url}/ui/jobs")
        await page.get_by_label("CSV file").set_input_files(people)
        await page.get_by_label("Template").select_option("welcome")
        await page.get_by_role("button", name="Start the job").click()

        await expect(page).to_have_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
        bar = page.get_by_role("progressbar", name="Rows with an outcome")
        await expect(bar).to_have_attribute("aria-valuemax", str(ROWS), timeout=WAIT_MS)
        await expect(page.locator("#job")).to_contain_text(f"{ROWS - 1} waiting", timeout=WAIT_MS)
        await expect(bar).to_have_attribute("aria-valuenow", "1")

        late_sink.start()
        await expect(bar).to_have_attribute("aria-valuenow", str(ROWS), timeout=WAIT_MS)
        await expect(page.locator("#job .badge")).to_have_text("done")
        await expect(page.locator("#job")).to_contain_text(f"{ROWS - 1} sent")
        await expect(page.locator("#errors")).to_contain_text("not-an-address")

        async with page.expect_download() as download_info:
            await page.get_by_role("link", name="errors.csv").click()
        download = await download_info.value
        saved = tmp_path / "errors.csv"
        await download.save_as(saved)
        assert saved.read_text().splitlines()[:2][0] == "row,email,reason"
        assert "not-an-address" in saved.read_text()

        await page.get_by_role("link", name="« Jobs").click()
        await expect(page.get_by_role("progressbar").first).to_have_attribute("aria-valuenow", str(ROWS))
    finally:
        late_sink.stop()


async def test_a_refused_upload_says_why_beside_the_file(
    page: Page, start_ui_service: StartService, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name\r\nAda\r\n")
    service = await start_ui_service()
    await page.goto(f"{service.base_url}/ui/jobs")
    await page.get_by_label("CSV file").set_input_files(wrong)
    await page.get_by_label("Template").select_option("welcome")
    await page.get_by_role("button", name="Start the job").click()

    await expect(page.locator("#file-errors")).to_contain_text("no `email` column in the header row")
    await expect(page.get_by_label("Template")).to_have_value("welcome")
