"""The stats store's contract, the operator's view (migration 0003): kept counts, the oldest queued age, sends
per minute, the latest errors — and that reading them never scans the table. The contract runs on both
backends."""

from __future__ import annotations

import sqlite3
import time
from importlib import resources
from pathlib import Path

import asyncpg

from service.domain import Status
from service.outbox import Outbox, StatsStore
from service.outbox.postgres import postgres_outbox
from service.outbox.postgres.database import PostgresDatabase
from service.outbox.postgres.notifications import UNSENT_QUERY
from service.outbox.sqlite import sqlite_outbox
from service.outbox.sqlite.database import SqliteDatabase
from tests.outbox.backends import notification


async def counts(stats: StatsStore) -> dict[Status, int]:
    return (await stats.queue_gauges()).counts


async def test_counts_follow_every_transition(outbox: Outbox) -> None:
    notifications = outbox.notifications
    assert await counts(outbox.stats) == {
        "queued": 0,
        "sending": 0,
        "sent": 0,
        "failed": 0,
        "scheduled": 0,
        "canceled": 0,
    }
    # An hour ago, so that the last claims' lease has run out (PostgreSQL recovers only those).
    now = time.time() - 3600
    await notifications.add([notification(created_at=now - 60) for _ in range(5)])
    assert await counts(outbox.stats) == {
        "queued": 5,
        "sending": 0,
        "sent": 0,
        "failed": 0,
        "scheduled": 0,
        "canceled": 0,
    }

    a, b, c, d = await notifications.claim(4, time.time())
    assert await counts(outbox.stats) == {
        "queued": 1,
        "sending": 4,
        "sent": 0,
        "failed": 0,
        "scheduled": 0,
        "canceled": 0,
    }

    await notifications.mark_sent(a.id, smtp_reply="250 ok", refused=[], now=now)
    await notifications.mark_failed(b.id, error="550 no", refused=[], now=now)
    await notifications.mark_retry(c.id, error="451 later", next_attempt_at=now, now=now)
    await notifications.release([d.id])
    assert await counts(outbox.stats) == {
        "queued": 3,
        "sending": 0,
        "sent": 1,
        "failed": 1,
        "scheduled": 0,
        "canceled": 0,
    }

    await notifications.requeue_failed(b.id, now)
    await notifications.claim(2, now)
    assert await counts(outbox.stats) == {
        "queued": 2,
        "sending": 2,
        "sent": 1,
        "failed": 0,
        "scheduled": 0,
        "canceled": 0,
    }
    assert await notifications.recover() == 2
    assert await counts(outbox.stats) == {
        "queued": 4,
        "sending": 0,
        "sent": 1,
        "failed": 0,
        "scheduled": 0,
        "canceled": 0,
    }


async def test_the_migration_counts_rows_that_were_already_there(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    # An outbox written before migration 0003: only the first migration applied.
    first = (resources.files("service.outbox") / "migrations" / "sqlite" / "0001_notifications.sql").read_text()
    db = sqlite3.connect(path)
    db.executescript(first)
    db.executemany(
        "INSERT INTO notifications (id, status, content, message_id, attempts, created_at, updated_at,"
        " next_attempt_at) VALUES (?, ?, '{}', ?, 1, 1.0, 1.0, 1.0)",
        [(f"n{i}", status, f"<n{i}@x>") for i, status in enumerate(["queued", "sent", "sent", "failed"])],
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()

    store = sqlite_outbox(path)
    await store.open()
    try:
        assert await counts(store.stats) == {
            "queued": 1,
            "sending": 0,
            "sent": 2,
            "failed": 1,
            "scheduled": 0,
            "canceled": 0,
        }
    finally:
        await store.close()


async def test_oldest_queued_is_the_earliest_accepted_still_waiting(outbox: Outbox) -> None:
    assert (await outbox.stats.queue_gauges()).oldest_queued_at is None
    old, new = notification(created_at=1000.0), notification(created_at=2000.0)
    await outbox.notifications.add([old])
    await outbox.notifications.add([new])
    assert (await outbox.stats.queue_gauges()).oldest_queued_at == 1000.0

    [claimed] = await outbox.notifications.claim(1, time.time())
    assert claimed.id == old.id
    assert (await outbox.stats.queue_gauges()).oldest_queued_at == 2000.0


async def test_sends_are_counted_per_minute_oldest_first(outbox: Outbox) -> None:
    now = 60 * 1_000_000 + 30.0  # half a minute into a minute
    await outbox.notifications.add([notification() for _ in range(4)])
    claimed = await outbox.notifications.claim(4, time.time())
    sent_at = [now - 5, now - 20, now - 65, now - 60 * 20]  # this minute twice, the last one, 20 minutes ago
    for n, at in zip(claimed, sent_at, strict=True):
        await outbox.notifications.mark_sent(n.id, smtp_reply="250 ok", refused=[], now=at)

    stats = await outbox.stats.queue_stats(now, minutes=3, errors=0)

    assert stats.sent_per_minute == [(now - 30 - 120, 0), (now - 30 - 60, 1), (now - 30, 2)]


async def test_failures_are_counted_per_minute_by_when_they_failed(outbox: Outbox) -> None:
    now = 60 * 1_000_000 + 30.0
    store = outbox.notifications
    await store.add([notification() for _ in range(5)])
    failed_now, failed_before, retrying, sent, failed_long_ago = await store.claim(5, time.time())
    await store.mark_failed(failed_now.id, error="550 no", refused=[], now=now - 1)
    await store.mark_failed(failed_before.id, error="550 no", refused=[], now=now - 61)
    # Neither a retry nor a send is a failure; nor is a failure older than the minutes asked for.
    await store.mark_retry(retrying.id, error="451 later", next_attempt_at=1e12, now=now - 2)
    await store.mark_sent(sent.id, smtp_reply="250 ok", refused=[], now=now - 3)
    await store.mark_failed(failed_long_ago.id, error="550 no", refused=[], now=now - 3600)

    stats = await outbox.stats.queue_stats(now, minutes=3, errors=0)

    assert stats.failed_per_minute == [(now - 30 - 120, 0), (now - 30 - 60, 1), (now - 30, 1)]
    assert stats.sent_per_minute == [(now - 30 - 120, 0), (now - 30 - 60, 0), (now - 30, 1)]


async def test_latest_errors_are_retrying_or_failed_newest_first(outbox: Outbox) -> None:
    await outbox.notifications.add([notification(request_id=f"r{i}") for i in range(4)])
    retried_then_sent, failed, retrying, fine = await outbox.notifications.claim(4, time.time())
    await outbox.notifications.mark_retry(retried_then_sent.id, error="451 a", next_attempt_at=0, now=100.0)
    await outbox.notifications.mark_failed(failed.id, error="550 b", refused=[], now=200.0)
    await outbox.notifications.mark_retry(retrying.id, error="421 c", next_attempt_at=1e12, now=300.0)
    await outbox.notifications.mark_sent(fine.id, smtp_reply="250 ok", refused=[], now=400.0)
    [again] = await outbox.notifications.claim(1, time.time())
    await outbox.notifications.mark_sent(again.id, smtp_reply="250 ok", refused=[], now=500.0)

    stats = await outbox.stats.queue_stats(time.time(), minutes=1, errors=10)

    assert [(e.notification_id, e.status, e.error, e.at) for e in stats.recent_errors] == [
        (retrying.id, Status.QUEUED, "421 c", 300.0),
        (failed.id, Status.FAILED, "550 b", 200.0),
    ]
    assert stats.recent_errors[0].request_id == retrying.request_id
    assert len((await outbox.stats.queue_stats(time.time(), minutes=1, errors=1)).recent_errors) == 1


async def test_reading_the_stats_never_scans_the_table(sqlite: Outbox) -> None:
    assert isinstance(sqlite.database, SqliteDatabase)
    database = sqlite.database
    # A scrape every few seconds must not cost more as `sent` rows pile up: every query of the operator's
    # view is answered from an index (or the kept counts), which EXPLAIN QUERY PLAN shows.
    statements: list[str] = []
    await database.read(lambda db: db.set_trace_callback(statements.append))
    await sqlite.stats.queue_gauges()
    await sqlite.stats.queue_stats(time.time(), minutes=15, errors=10)
    await database.read(lambda db: db.set_trace_callback(None))

    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) >= 5
    for statement in selects:
        plan = await database.read(lambda db, s=statement: db.execute(f"EXPLAIN QUERY PLAN {s}").fetchall())
        details = " | ".join(row[3] for row in plan)
        assert not any(row[3] == "SCAN notifications" for row in plan), (statement, details)


async def test_postgresql_stats_never_scan_the_table(postgres_url: str) -> None:
    # The same promise on PostgreSQL, with sequential scans priced out so that the plan shows whether an index
    # can answer (on a small table the planner would rightly scan anyway).
    store = postgres_outbox(postgres_url, lease_seconds=300, pool_size=2, queue_limit=10)
    await store.open()
    assert isinstance(store.database, PostgresDatabase)
    try:
        await store.notifications.add([notification() for _ in range(3)])
        now = time.time()
        statements = [
            UNSENT_QUERY,
            "SELECT status, sum(count) AS count FROM notification_counts GROUP BY status",
            f"SELECT created_at FROM notifications WHERE status = '{Status.QUEUED}' ORDER BY seq LIMIT 1",
            f"SELECT floor(sent_at / 60) AS minute, count(*) FROM notifications WHERE sent_at IS NOT NULL"
            f" AND sent_at >= {now - 900} GROUP BY minute",
            f"SELECT id FROM notifications WHERE last_error IS NOT NULL AND status <> '{Status.SENT}'"
            " ORDER BY updated_at DESC LIMIT 10",
            f"SELECT floor(updated_at / 60) AS minute, count(*) FROM notifications WHERE last_error IS NOT NULL"
            f" AND status <> '{Status.SENT}' AND updated_at >= {now - 3600} AND status = '{Status.FAILED}'"
            " GROUP BY minute",
        ]
        async with store.database.connection() as conn:
            await conn.execute("ANALYZE")
            await conn.execute("SET enable_seqscan = off")
            for statement in statements:
                plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {statement}"))
                assert "Seq Scan on notifications" not in plan, (statement, plan)
    finally:
        await store.close()


async def test_the_postgresql_migration_counts_rows_that_were_already_there(postgres_url: str) -> None:
    # A database written before migration 0003: only 0001 and 0002 applied, rows in every status.
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        folder = resources.files("service.outbox") / "migrations" / "postgres"
        for number, name in ((1, "notifications"), (2, "idempotency_keys")):
            await conn.execute((folder / f"{number:04d}_{name}.sql").read_text())
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name)
        await conn.executemany(
            "INSERT INTO notifications (id, status, content, message_id, attempts, created_at, updated_at,"
            " next_attempt_at) VALUES ($1, $2, '{}', $3, 1, 1.0, 1.0, 1.0)",
            [(f"n{i}", status, f"<n{i}@x>") for i, status in enumerate(["queued", "sent", "sent", "failed"])],
        )
    finally:
        await conn.close()

    store = postgres_outbox(postgres_url, lease_seconds=300, pool_size=2)
    await store.open()
    try:
        assert await counts(store.stats) == {
            "queued": 1,
            "sending": 0,
            "sent": 2,
            "failed": 1,
            "scheduled": 0,
            "canceled": 0,
        }
        assert await store.notifications.count_unsent() == 1
    finally:
        await store.close()
