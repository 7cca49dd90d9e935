"""Fixtures of the store contracts: each runs against both backends (`backend`), with the outbox open on it
(`outbox`: every store on one database; a contract drives its store through the others it needs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.outbox import NotificationStore, Outbox
from service.outbox.postgres import postgres_outbox
from service.outbox.sqlite import sqlite_outbox
from tests.outbox.backends import LEASE_SECONDS, Backend
from tests.postgres import temporary_database


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", lambda **options: sqlite_outbox(tmp_path / "outbox.sqlite3", **options))
        return
    async with temporary_database() as url:
        yield Backend(
            "postgres", lambda **options: postgres_outbox(url, lease_seconds=LEASE_SECONDS, pool_size=4, **options)
        )


@pytest.fixture
async def outbox(backend: Backend) -> AsyncIterator[Outbox]:
    opened = backend.make()
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def notifications(outbox: Outbox) -> NotificationStore:
    return outbox.notifications


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[Outbox]:
    opened = sqlite_outbox(tmp_path / "outbox.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[Outbox, Outbox]]:
    """Two replicas' outboxes on one PostgreSQL database."""
    first = postgres_outbox(postgres_url, lease_seconds=LEASE_SECONDS, pool_size=4)
    second = postgres_outbox(postgres_url, lease_seconds=LEASE_SECONDS, pool_size=4)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()
