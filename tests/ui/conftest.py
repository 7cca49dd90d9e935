from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.processes import ServiceProcess, service_env, start_service
from tests.smtp_sink import SmtpSink
from tests.ui.browser import chromium, require_browser

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

StartService = Callable[..., Awaitable[ServiceProcess]]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_browser()
    async with chromium() as running:
        yield running


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    # A page that waits longer than this for anything is broken, not slow.
    context.set_default_timeout(15_000)
    yield await context.new_page()
    await context.close()


@pytest.fixture
async def start_ui_service(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[StartService]:
    """Starts the real service (uvicorn, its own dispatcher process) beside the test's SMTP sink."""
    started: list[ServiceProcess] = []

    async def start(**overrides: Any) -> ServiceProcess:
        env = service_env(tmp_path / "outbox.sqlite3", smtp_sink.port, JOBS_DIR=tmp_path / "jobs", **overrides)
        service = await start_service(env, tmp_path / "service.log")
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
