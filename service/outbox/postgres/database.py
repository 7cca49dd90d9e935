"""The PostgreSQL outbox's database, shared by every replica of the service (asyncpg): the pool, the
migrations, and the listener that wakes this replica when another one inserts.

Inserts `NOTIFY` the other replicas so that their dispatchers wake at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import structlog

from service.outbox.database import Database, read_migrations
from service.outbox.errors import OutboxUnavailable

log = structlog.get_logger("service.outbox")

# Every replica runs its migrations under this advisory lock, so replicas starting together apply each once.
MIGRATION_LOCK = 0x6E737663  # "nsvc"
# The channel inserts notify; every replica listens on it.
CHANNEL = "outbox_due"
# A readiness probe answers within this or says no.
PROBE_TIMEOUT_SECONDS = 2.0
# How long to wait before connecting the listener again after the database dropped it.
LISTEN_RETRY_SECONDS = 1.0

ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


class PostgresDatabase(Database):
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        # Who holds a claim: shows in `claimed_by`, so an operator can tell which replica has which rows.
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._pool: asyncpg.Pool | None = None
        self._subscribers: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None
        # Set once the listener is LISTENing and has woken its subscribers for what it may have missed.
        self.listening = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size)
            async with self._pool.acquire() as conn:
                await self._migrate(conn)
        except ERRORS as exc:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None
            raise OutboxUnavailable(f"outbox {redact(self.url)}: {exc}") from exc
        self._listener = asyncio.create_task(self._listen_forever(), name="outbox-listener")

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        # A session-level advisory lock: the second replica waits here until the first has committed all.
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            for number, name, script in read_migrations("postgres"):
                if number <= applied:
                    continue
                async with conn.transaction():
                    await conn.execute(script)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name)
                log.info("outbox_schema_migrated", version=number, name=name, replica=self.replica)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def schema_version(self) -> int:
        async with self.connection() as conn:
            return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))

    async def check_writable(self) -> None:
        # PostgreSQL's own disk is full or not for every write alike: the heartbeat going through clears a
        # failed write (SQLite's probe writes more, sqlite/database.py).
        try:
            # The whole probe, waiting for a pooled connection included, answers within the timeout.
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS), self.connection() as conn:
                await conn.execute(
                    "INSERT INTO heartbeat (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                    time.time(),
                )
        except TimeoutError as exc:
            raise OutboxUnavailable(f"outbox {redact(self.url)}: no write within {PROBE_TIMEOUT_SECONDS:g}s") from exc
        self.note_write(None)

    # -- wake-ups -----------------------------------------------------------------------------------------

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._subscribers.append(wake)

    def _wake_all(self, *_: Any) -> None:
        for wake in self._subscribers:
            wake()

    async def _listen_forever(self) -> None:
        """Hold one connection that LISTENs; when the database drops it, connect again and wake everyone
        (a notification may have been missed meanwhile)."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._wake_all)
                self._wake_all()
                self.listening.set()
                await lost.wait()
                self.listening.clear()
                log.warning("outbox_listener_lost", retry_in_seconds=LISTEN_RETRY_SECONDS)
            except ERRORS as exc:
                log.warning("outbox_listener_failed", error=str(exc), retry_in_seconds=LISTEN_RETRY_SECONDS)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(LISTEN_RETRY_SECONDS)

    # -- the stores' way in ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; database errors come out as OutboxUnavailable."""
        if self._pool is None:
            raise OutboxUnavailable("the outbox is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except ERRORS as exc:
            unavailable = OutboxUnavailable(f"outbox {redact(self.url)}: {exc}")
            # Not only writes: a database that cannot be read cannot take the next write either.
            self.note_write(unavailable)
            raise unavailable from exc
