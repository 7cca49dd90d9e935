"""In Chromium: what senders and uploaders write — subjects, names, bodies, metadata, CSV cells, a filter's text —
full of markup, event handlers, `javascript:` URLs and right-to-left overrides, shows as inert text. No script of
theirs runs, no dialog opens, and the mail's HTML loads nothing from anywhere."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.ui.conftest import StartService

# Each starts the service under uvicorn and drives Chromium.
pytestmark = pytest.mark.slow

WAIT_MS = 20_000
# Each payload, if it ever ran, would set window.__xss or open a dialog.
CORPUS = [
    "<script>window.__xss = 'script'</script>",
    '"><img src=x onerror="window.__xss = \'img\'">',
    "javascript:window.__xss='url'",
    "' onmouseover='window.__xss = 1' data-x='",
    "</title><svg onload=alert(1)>",
    "\u202egnp.exe\u202c invoice \u2067RTL\u2069 {{ 7 * 7 }}",
]
# The mail's own HTML: scripts, handlers, a refresh to a javascript: URL, and loads from this very host (which
# would show up as requests if anything were fetched).
MAIL_HTML = """<h1>Hello from the HTML part</h1>
<script>document.body.setAttribute('data-ran', 'script'); fetch('/beacon-fetch')</script>
<img src="/beacon-img" onerror="document.body.setAttribute('data-ran', 'onerror')">
<link rel="stylesheet" href="/beacon-link">
<style>@import url('/beacon-import'); p { background: url('/beacon-css') }</style>
<meta http-equiv="refresh" content="0; url=javascript:parent.__xss='refresh'">
<a href="javascript:parent.__xss='link'" id="evil-link">click me</a><p>styled</p>"""


async def test_the_xss_corpus_is_inert_on_every_page(page: Page, start_ui_service: StartService) -> None:
    service = await start_ui_service()
    dialogs: list[str] = []
    blocked: list[str] = []
    loaded: list[str] = []

    async def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", dismiss)
    # Chromium reports a load the policy refused as a request that failed with "csp": it never left the browser.
    page.on("requestfailed", lambda request: blocked.append(f"{request.url} {request.failure}"))
    page.on("requestfinished", lambda request: loaded.append(request.url))

    async with httpx.AsyncClient(base_url=service.base_url) as api:
        created = []
        for payload in CORPUS:
            response = await api.post(
                "/v1/notifications",
                json={
                    "to": ["ada@example.com"],
                    "subject": payload,
                    "text": payload,
                    "html": MAIL_HTML,
                    "metadata": {"note": payload, "job_id": payload},
                },
            )
            assert response.status_code == 202, response.text
            created.append(response.json()["id"])
        named = await api.post(
            "/v1/notifications",
            json={"to": ['"<img src=x onerror=alert(1)>" <ada@example.com>'], "subject": "Named", "text": "x"},
        )
        assert named.status_code == 202, named.text
        cells = "\r\n".join(f'"{p.replace(chr(34), chr(34) * 2)}",Ada,https://x' for p in CORPUS)
        job = await api.post(
            "/v1/jobs",
            files={"file": ("xss.csv", f"email,first_name,login_url\r\n{cells}\r\n".encode(), "text/csv")},
            data={"template": "welcome"},
        )
        assert job.status_code == 202, job.text

    await page.goto(f"{service.base_url}/ui/")
    for payload in CORPUS:
        await expect(page.get_by_role("link", name=payload, exact=True)).to_be_visible()
    await expect(page.get_by_text('"<img src=x onerror=alert(1)>" <ada@example.com>')).to_be_visible()
    # Typed into the filter and echoed back: still text.
    await page.get_by_label("Recipient").fill(CORPUS[1])
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_label("Recipient")).to_have_value(CORPUS[1])

    for notification_id, payload in zip(created, CORPUS, strict=True):
        await page.goto(f"{service.base_url}/ui/notifications/{notification_id}")
        await expect(page.get_by_role("heading", level=1)).to_have_text(payload)
        await expect(page.locator(".mail-text")).to_have_text(payload)
        frame = page.frame_locator("iframe.mail-html")
        await expect(frame.get_by_role("heading", name="Hello from the HTML part")).to_be_visible()
        await expect(frame.locator("body[data-ran]")).to_have_count(0)
        await expect(page.locator("iframe.mail-html")).to_have_attribute("sandbox", "")
        await expect(page).to_have_url(f"{service.base_url}/ui/notifications/{notification_id}")

    await page.goto(f"{service.base_url}/ui/jobs/{job.json()['id']}")
    await expect(page.locator("#errors")).to_contain_text(CORPUS[0], timeout=WAIT_MS)
    for payload in CORPUS[1:]:
        await expect(page.locator("#errors")).to_contain_text(payload.replace("\u202c", "").split()[0])

    for url in (f"{service.base_url}/ui/", f"{service.base_url}/ui/jobs"):
        await page.goto(url)
        assert await page.locator('img[src="x"], svg[onload], script:not([src])').count() == 0
        assert await page.locator('a[href^="javascript:"]').count() == 0
    assert await page.evaluate("window.__xss") is None
    assert dialogs == []
    assert [url for url in loaded if "beacon" in url] == []
    assert {entry.rpartition(" ")[2] for entry in blocked if "beacon" in entry} == {"csp"}
    assert "GET /ui/jobs" in service.output()
    assert "beacon" not in service.output()
