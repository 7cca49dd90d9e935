"""The database under the stores, on both backends: migrations, the health check, and the SQLite file's
statement splitter. (The file's WAL mode and synchronous setting are durability: test_notifications.py.)"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import asyncpg
import pytest

from service.outbox import Outbox, OutboxUnavailable, read_migrations
from service.outbox.postgres import postgres_outbox
from service.outbox.sqlite import sqlite_outbox
from service.outbox.sqlite.database import GATHER_TURNS, SqliteDatabase, split_statements
from tests.outbox.backends import LEASE_SECONDS, Backend, notification
from tests.postgres import latest_migration
from tests.smtp_sink import free_port


async def test_a_locked_file_is_reported_unwritable(tmp_path: Path, sqlite: Outbox) -> None:
    blocker = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OutboxUnavailable):
            await sqlite.database.check_writable()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await sqlite.database.check_writable()


async def test_only_the_dispatchers_process_runs_statements_on_the_event_loop(tmp_path: Path) -> None:
    # The HTTP process keeps its event loop free for requests; the dispatcher's own process (on_loop) skips the
    # trip to the outbox's thread, and its writes, group commit included, land all the same.
    for on_loop, expected in [(False, "outbox"), (True, threading.current_thread().name)]:
        outbox = sqlite_outbox(tmp_path / f"{on_loop}.sqlite3", on_loop=on_loop)
        await outbox.open()
        try:
            thread = await outbox.database.read(lambda _db: threading.current_thread().name)
            await outbox.notifications.add([notification()])
            assert await outbox.notifications.count_unsent() == 1
        finally:
            await outbox.close()
        assert thread.startswith(expected), (on_loop, thread)


async def test_migrations_run_once_and_record_the_version(backend: Backend) -> None:
    for _ in range(2):
        store = backend.make()
        await store.open()
        assert await store.database.schema_version() == latest_migration(backend.name)
        await store.database.check_writable()
        await store.close()


async def test_replicas_opening_together_apply_each_migration_once(postgres_url: str) -> None:
    stores = [postgres_outbox(postgres_url, lease_seconds=LEASE_SECONDS, pool_size=2) for _ in range(4)]

    await asyncio.gather(*(store.open() for store in stores))
    try:
        versions = [await store.database.schema_version() for store in stores]
    finally:
        await asyncio.gather(*(store.close() for store in stores))

    conn = await asyncpg.connect(postgres_url)
    try:
        applied = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert versions == [latest_migration("postgres")] * 4
    # The migrations' own numbers (one may be missing while a branch that adds it is unmerged).
    assert [row["version"] for row in applied] == [number for number, _, _ in read_migrations("postgres")]


async def test_an_unreachable_database_is_reported_at_open() -> None:
    store = postgres_outbox(f"postgresql://postgres@127.0.0.1:{free_port()}/none", lease_seconds=LEASE_SECONDS)

    with pytest.raises(OutboxUnavailable):
        await store.open()


def test_migration_statements_are_split_whole_even_with_triggers_and_comments() -> None:
    script = """-- a comment; with a semicolon
CREATE TABLE t (a INTEGER);
CREATE TRIGGER t_insert AFTER INSERT ON t
BEGIN
    UPDATE t SET a = a + 1;  -- inner statement
    UPDATE t SET a = a - 1;
END;
INSERT INTO t VALUES (';');
-- trailing comment
"""

    statements = split_statements(script)

    assert len(statements) == 3
    assert statements[1].startswith("CREATE TRIGGER")
    assert statements[1].endswith("END;")
    db = sqlite3.connect(":memory:")
    for statement in statements:
        db.execute(statement)
    assert db.execute("SELECT count(*) FROM t").fetchone() == (1,)


async def test_the_dispatchers_group_commit_gathers_outcomes_that_arrive_a_few_loop_turns_apart(tmp_path: Path) -> None:
    # In the dispatcher's process (on_loop) the writer lets GATHER_TURNS loop turns pass before it takes its group:
    # two workers' outcomes finishing a couple of turns apart share one transaction instead of costing two.
    assert GATHER_TURNS > 2
    groups: dict[bool, list[list[str]]] = {}
    for on_loop in (False, True):
        database = SqliteDatabase(tmp_path / f"{on_loop}.sqlite3", lock=False, on_loop=on_loop)
        written: list[list[str]] = []

        def write_group(_db: sqlite3.Connection, writes: list[str], written: list[list[str]] = written) -> list[None]:
            written.append(writes)
            return [None] * len(writes)

        group_commit = database.group_commit(write_group)
        await database.open()
        try:
            first = asyncio.create_task(group_commit.write("first outcome"))
            for _ in range(2):
                await asyncio.sleep(0)
            await asyncio.gather(first, group_commit.write("second outcome"))
        finally:
            await database.close()
        groups[on_loop] = written
    assert groups[True] == [["first outcome", "second outcome"]]
    # The HTTP process' group commit takes what is there at once: a request's 202 waits for no one.
    assert groups[False] == [["first outcome"], ["second outcome"]]
