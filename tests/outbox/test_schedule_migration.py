"""Migration 0009 (scheduled send) on databases from before it: SQLite rebuilds `notifications` to widen its status
CHECK, PostgreSQL alters the constraint. Every row, its seq, its history and whatever references it stay."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import asyncpg

from service.domain import Status
from service.outbox import read_migrations
from service.outbox.postgres import postgres_outbox
from service.outbox.sqlite import sqlite_outbox
from service.outbox.sqlite.database import split_statements
from tests.outbox.backends import notification
from tests.postgres import latest_migration, temporary_database

SCHEDULE = 9


def sqlite_at(path: Path, version: int) -> sqlite3.Connection:
    """A SQLite outbox file migrated up to `version`, as that release of the service left it."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    for number, _name, script in read_migrations("sqlite"):
        if number <= version:
            for statement in split_statements(script):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={number}")
    db.execute("COMMIT")
    return db


def insert_old_row(db: sqlite3.Connection, notification_id: str, status: str, *, job_id: str | None = None) -> None:
    now = time.time()
    db.execute(
        "INSERT INTO notifications (id, status, content, message_id, attempts, created_at, updated_at,"
        " next_attempt_at, job_id, history, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            notification_id,
            status,
            json.dumps(
                {
                    "to": ["ada@example.com"],
                    "cc": [],
                    "bcc": [],
                    "reply_to": None,
                    "subject": f"old {status}",
                    "text": "hi",
                    "html": None,
                    "metadata": {},
                    "envelope": None,
                }
            ),
            f"<{notification_id}@example.com>",
            1 if status != "queued" else 0,
            now,
            now,
            now,
            job_id,
            json.dumps([{"at": now, "outcome": "failed", "smtp_code": 550, "message": "550 no"}])
            if status == "failed"
            else None,
            "550 no" if status == "failed" else None,
        ),
    )


def table_shape(db: sqlite3.Connection, table: str) -> tuple[list[str], set[str]]:
    columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
    indexes = {row[1] for row in db.execute(f"PRAGMA index_list({table})") if not row[1].startswith("sqlite_")}
    return columns, indexes


async def test_a_sqlite_outbox_from_before_keeps_its_rows_seqs_and_what_references_them(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with contextlib.closing(sqlite_at(path, 6)) as db:
        db.execute("INSERT INTO jobs (id, status, template, csv_path, created_at) VALUES ('j1', 'done', 't', 'x', 0)")
        for number, status in enumerate(("queued", "sending", "sent", "failed", "sent")):
            insert_old_row(db, f"old-{number}", status, job_id="j1" if number == 2 else None)
        # The newest row gone: AUTOINCREMENT never hands its seq out again, not even after the rebuild.
        db.execute("DELETE FROM notifications WHERE id = 'old-4'")
        # A table of a later feature that references notifications, with a cascade that a careless rebuild (foreign
        # keys on while the old table is dropped) would fire.
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("CREATE TABLE child (notification_id TEXT NOT NULL REFERENCES notifications (id) ON DELETE CASCADE)")
        db.execute("INSERT INTO child VALUES ('old-0'), ('old-3')")
        before = db.execute("SELECT seq, id, status, history, job_id FROM notifications ORDER BY seq").fetchall()
        counts_before = dict(db.execute("SELECT status, count FROM notification_counts").fetchall())

    outbox = sqlite_outbox(path)
    await outbox.open()
    try:
        assert await outbox.database.schema_version() >= SCHEDULE
        later = notification(status=Status.SCHEDULED, send_at=time.time() + 60)
        await outbox.notifications.add([later])
        old = await outbox.notifications.get("old-3")
        assert old is not None
        assert old.status == Status.FAILED
        assert old.history[0].smtp_code == 550
        counts = (await outbox.stats.queue_gauges()).counts
    finally:
        await outbox.close()

    with contextlib.closing(sqlite3.connect(path)) as db:
        after = db.execute(
            "SELECT seq, id, status, history, job_id FROM notifications WHERE id LIKE 'old-%' ORDER BY seq"
        ).fetchall()
        assert after == before
        new_seq = db.execute("SELECT seq FROM notifications WHERE id = ?", (later.id,)).fetchone()[0]
        assert new_seq == 6  # after old-4's 5, though that row is gone
        assert db.execute("SELECT notification_id FROM child ORDER BY 1").fetchall() == [("old-0",), ("old-3",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert {status: counts[Status(status)] for status in counts_before} == counts_before
    assert (counts[Status.SCHEDULED], counts[Status.CANCELED]) == (1, 0)


async def test_the_sqlite_rebuild_keeps_every_column_and_index_of_notifications(tmp_path: Path) -> None:
    """Guards the rebuild's column list: a column or index another migration adds to notifications before 0009
    must be in 0009's new table too, or the rebuild would drop it."""
    with contextlib.closing(sqlite_at(tmp_path / "before.sqlite3", SCHEDULE - 1)) as db:
        columns_before, indexes_before = table_shape(db, "notifications")
        triggers_before = {row[0] for row in db.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")}
    with contextlib.closing(sqlite_at(tmp_path / "after.sqlite3", SCHEDULE)) as db:
        columns_after, indexes_after = table_shape(db, "notifications")
        triggers_after = {row[0] for row in db.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")}

    assert columns_after == [*columns_before, "send_at"]
    assert indexes_after >= indexes_before
    assert triggers_after >= triggers_before


async def test_a_postgres_outbox_from_before_keeps_its_rows() -> None:
    async with temporary_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "CREATE TABLE schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for number, name, script in read_migrations("postgres"):
                if number <= 6:
                    await conn.execute(script)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name)
            now = time.time()
            for number, status in enumerate(("queued", "sending", "sent", "failed")):
                await conn.execute(
                    "INSERT INTO notifications (id, status, content, message_id, created_at, updated_at,"
                    " next_attempt_at) VALUES ($1, $2, $3, $4, $5, $5, $5)",
                    f"old-{number}",
                    status,
                    json.dumps(
                        {
                            "to": ["ada@example.com"],
                            "cc": [],
                            "bcc": [],
                            "reply_to": None,
                            "subject": "old",
                            "text": "hi",
                            "html": None,
                            "metadata": {},
                        }
                    ),
                    f"<old-{number}@example.com>",
                    now,
                )
            before = await conn.fetch("SELECT seq, id, status FROM notifications ORDER BY seq")
        finally:
            await conn.close()

        outbox = postgres_outbox(url, lease_seconds=300, pool_size=2)
        await outbox.open()
        try:
            assert await outbox.database.schema_version() == latest_migration("postgres")
            later = notification(status=Status.SCHEDULED, send_at=time.time() + 60)
            await outbox.notifications.add([later])
            assert (await outbox.notifications.cancel("old-0", time.time())) is not None
            counts = (await outbox.stats.queue_gauges()).counts
        finally:
            await outbox.close()

        conn = await asyncpg.connect(url)
        try:
            after = await conn.fetch("SELECT seq, id, status FROM notifications WHERE id LIKE 'old-%' ORDER BY seq")
        finally:
            await conn.close()
        assert [tuple(r) for r in after] == [
            (seq, notification_id, "canceled" if notification_id == "old-0" else status)
            for seq, notification_id, status in (tuple(r) for r in before)
        ]
        assert {status: counts[status] for status in Status} == {
            Status.QUEUED: 0,
            Status.SENDING: 1,
            Status.SENT: 1,
            Status.FAILED: 1,
            Status.SCHEDULED: 1,
            Status.CANCELED: 1,
        }
