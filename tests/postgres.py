"""Throwaway PostgreSQL databases for tests, on the server at TEST_POSTGRES_URL (the local one by default).

Each test gets a database of its own (`nsvc_test_<random>`), dropped afterwards. Without a server the tests
that need one are skipped, unless REQUIRE_POSTGRES=1 (set by .ci/run), which makes that a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.outbox import read_migrations

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def latest_migration(backend: str) -> int:
    """The number of the last migration file of `backend` ("sqlite" or "postgres")."""
    return read_migrations(backend)[-1][0]


def database_url(name: str) -> str:
    parts = urlsplit(POSTGRES_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _connect_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)


async def reachable() -> bool:
    """Whether the server answers, for a test that covers PostgreSQL when it can and runs without it too
    (still a failure with REQUIRE_POSTGRES=1)."""
    try:
        await (await _connect_admin()).close()
    except pytest.skip.Exception:
        return False
    return True


@asynccontextmanager
async def temporary_database() -> AsyncIterator[str]:
    """A new empty database; yields its URL and drops it (and any connection left to it) afterwards."""
    admin = await _connect_admin()
    name = f"nsvc_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
