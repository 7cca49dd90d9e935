"""A notification's own sender (migration 0011) on both backends: stored, read back by get, a page and the
dispatcher's claim; NULL for a notification without one and for every row from before the migration."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import asyncpg

from service.outbox import NotificationStore, read_migrations
from service.outbox.postgres import postgres_outbox
from service.outbox.sqlite import sqlite_outbox
from tests.outbox.backends import notification
from tests.outbox.test_schedule_migration import insert_old_row, sqlite_at
from tests.postgres import temporary_database

SENDER = 11
BILLING = "Acme Billing <billing@example.com>"


async def test_the_sender_is_stored_and_carried_by_the_claim(notifications: NotificationStore) -> None:
    own, plain = notification(sender=BILLING), notification()
    await notifications.add([own, plain])

    got = await notifications.get(own.id)
    assert got is not None
    assert got.sender == BILLING
    page = await notifications.page(status=None, limit=10, cursor=None)
    assert {n.id: n.sender for n in page.items} == {own.id: BILLING, plain.id: None}
    claimed = await notifications.claim(10, time.time())
    assert {n.id: n.sender for n in claimed} == {own.id: BILLING, plain.id: None}


async def test_a_sqlite_outbox_from_before_gets_the_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with contextlib.closing(sqlite_at(path, SENDER - 1)) as db:
        insert_old_row(db, "old-0", "queued")
    outbox = sqlite_outbox(path)
    await outbox.open()
    try:
        assert await outbox.database.schema_version() >= SENDER
        old = await outbox.notifications.get("old-0")
        assert old is not None
        assert (old.sender, old.subject) == (None, "old queued")
        later = notification(sender=BILLING)
        await outbox.notifications.add([later])
        claimed = await outbox.notifications.claim(10, time.time())
        assert {n.id: n.sender for n in claimed} == {"old-0": None, later.id: BILLING}
    finally:
        await outbox.close()


async def test_a_postgres_outbox_from_before_gets_the_column_and_keeps_its_rows() -> None:
    async with temporary_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "CREATE TABLE schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for number, name, script in read_migrations("postgres"):
                if number < SENDER:
                    await conn.execute(script)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name)
            content = {"to": ["ada@example.com"], "cc": [], "bcc": [], "reply_to": None, "subject": "old"}
            await conn.execute(
                "INSERT INTO notifications (id, status, content, message_id, created_at, updated_at,"
                " next_attempt_at) VALUES ('old-0', 'queued', $1, '<old-0@example.com>', $2, $2, $2)",
                json.dumps({**content, "text": "hi", "html": None, "metadata": {}}),
                time.time(),
            )
        finally:
            await conn.close()

        outbox = postgres_outbox(url, lease_seconds=300, pool_size=2)
        await outbox.open()
        try:
            assert await outbox.database.schema_version() >= SENDER
            later = notification(sender=BILLING)
            await outbox.notifications.add([later])
            claimed = await outbox.notifications.claim(10, time.time())
            assert {n.id: n.sender for n in claimed} == {"old-0": None, later.id: BILLING}
        finally:
            await outbox.close()
