"""The operator's view from the SQLite file (migration 0003): kept counts, index lookups, no table scan."""

from __future__ import annotations

import sqlite3

from service.domain import Status
from service.outbox.sqlite.database import SqliteDatabase
from service.outbox.stats import QueueGauges, QueueStats, StatsStore


def _gauges(db: sqlite3.Connection) -> QueueGauges:
    counts = dict.fromkeys(Status, 0)
    for status, count in db.execute("SELECT status, count FROM notification_counts").fetchall():
        counts[Status(status)] = count
    # seq follows acceptance order, so the (status, seq) index finds the oldest queued row at once.
    row = db.execute(
        f"SELECT created_at FROM notifications WHERE status = '{Status.QUEUED}' ORDER BY seq LIMIT 1"
    ).fetchone()
    return QueueGauges(counts=counts, oldest_queued_at=row[0] if row else None)


class SqliteStatsStore(StatsStore):
    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database

    async def queue_gauges(self) -> QueueGauges:
        return await self.database.read(_gauges)

    async def queue_stats(self, now: float, *, minutes: int, errors: int) -> QueueStats:
        current_minute = int(now // 60)
        first_minute = current_minute - minutes + 1

        def stats(db: sqlite3.Connection) -> QueueStats:
            # One read transaction: the counts, the per-minute series and the errors are one snapshot.
            db.execute("BEGIN")
            try:
                gauges = _gauges(db)
                sent = dict(
                    db.execute(
                        "SELECT CAST(sent_at / 60 AS INTEGER) AS minute, count(*) FROM notifications"
                        " WHERE sent_at IS NOT NULL AND sent_at >= :since GROUP BY minute",
                        {"since": first_minute * 60.0},
                    ).fetchall()
                )
                rows = db.execute(
                    "SELECT id, status, attempts, last_error, updated_at, request_id FROM notifications"
                    f" WHERE last_error IS NOT NULL AND status <> '{Status.SENT}'"
                    " ORDER BY updated_at DESC LIMIT :limit",
                    {"limit": errors},
                ).fetchall()
                # The errors' partial index again, over its recent end; `+status` keeps SQLite off the
                # (status, seq) index, which would walk every failed row there ever was.
                failed = dict(
                    db.execute(
                        "SELECT CAST(updated_at / 60 AS INTEGER) AS minute, count(*) FROM notifications"
                        f" WHERE last_error IS NOT NULL AND status <> '{Status.SENT}'"
                        f" AND updated_at >= :since AND +status = '{Status.FAILED}' GROUP BY minute",
                        {"since": first_minute * 60.0},
                    ).fetchall()
                )
            finally:
                db.execute("COMMIT")
            return QueueStats.from_rows(gauges, range(first_minute, current_minute + 1), sent, failed, rows)

        return await self.database.read(stats)
