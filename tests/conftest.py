from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from structlog.testing import capture_logs

from service.config import Settings
from service.main import create_app
from tests.smtp_sink import SmtpSink, free_port

# Whole files whose every test starts processes (uvicorn, the dispatcher's own process, the benchmark): `slow`,
# left out by `make test-fast`. Single slow tests elsewhere carry @pytest.mark.slow themselves.
SLOW_FILES = ("tests/e2e/", "tests/test_bench.py", "tests/delivery/test_process.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW_FILES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _quiet_smtp_sink_logs() -> None:
    # aiosmtpd logs every SMTP command at INFO; a failing test's output should show the service's events.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def make_settings(tmp_path: Path, smtp_port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": smtp_port,
        "SMTP_TIMEOUT_SECONDS": 2,
        "SEND_TIMEOUT_SECONDS": 5,
        "OUTBOX_PATH": tmp_path / "outbox.sqlite3",
        "SEND_CONCURRENCY": 2,
        "RETRY_BASE_SECONDS": 0.05,
        "RETRY_MAX_SECONDS": 0.2,
        "SHUTDOWN_GRACE_SECONDS": 2,
        "MAIL_FROM": "Notifier <notifier@example.com>",
        "LOG_FORMAT": "console",
        # One process, so that tests can watch the dispatcher (its logs, its metrics) from the inside;
        # tests/delivery/test_process.py and the end-to-end tests run it in a process of its own.
        "DISPATCHER_PROCESS": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path, smtp_sink: SmtpSink) -> Settings:
    return make_settings(tmp_path, smtp_sink.port)


@pytest.fixture
def unreachable_port() -> int:
    return free_port()


class Service:
    """The real app with its lifespan running, reached over an in-process HTTP transport."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    async def post(self, **body: Any) -> httpx.Response:
        return await self.client.post("/v1/notifications", json=body)

    async def wait_for_status(self, notification_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            response = await self.client.get(f"/v1/notifications/{notification_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] in statuses:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"notification stayed {body['status']}, expected {statuses}: {body}")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=10, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield Service(app, client)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    async with running(settings) as running_service:
        yield running_service


MAIL = {"to": ["ada@example.com"], "subject": "Hello", "text": "Hi Ada"}


@contextmanager
def captured_events() -> Iterator[list[dict[str, Any]]]:
    """structlog events, with the context-bound keys (request_id, notification_id) merged in."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        yield events


async def wait_for_event(
    events: list[dict[str, Any]], event: str, timeout: float = 10.0, **keys: Any
) -> dict[str, Any]:
    """The first captured event named `event` with these keys, waited for: a status is written before the
    event that tells of it is logged, so seeing the status is not yet seeing the event."""
    deadline = time.monotonic() + timeout
    while True:
        for candidate in list(events):
            if candidate["event"] == event and all(candidate.get(k) == v for k, v in keys.items()):
                return candidate
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event} event with {keys} within {timeout}s: {[e['event'] for e in events]}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """The URL of a fresh PostgreSQL database of this test's own, dropped afterwards."""
    from tests.postgres import temporary_database

    async with temporary_database() as url:
        yield url
