"""The operator's view from the PostgreSQL database (migration 0003): the counts every replica keeps, index
lookups, no table scan."""

from __future__ import annotations

import asyncpg

from service.domain import Status
from service.outbox.postgres.database import PostgresDatabase
from service.outbox.stats import QueueGauges, QueueStats, StatsStore


async def _gauges(conn: asyncpg.Connection) -> QueueGauges:
    counts = dict.fromkeys(Status, 0)
    for row in await conn.fetch("SELECT status, sum(count) AS count FROM notification_counts GROUP BY status"):
        counts[Status(row["status"])] = int(row["count"])
    # seq follows acceptance order, so the (status, seq) index finds the oldest queued row at once.
    oldest = await conn.fetchval(
        f"SELECT created_at FROM notifications WHERE status = '{Status.QUEUED}' ORDER BY seq LIMIT 1"
    )
    return QueueGauges(counts=counts, oldest_queued_at=oldest)


class PostgresStatsStore(StatsStore):
    def __init__(self, database: PostgresDatabase) -> None:
        self.database = database

    async def queue_gauges(self) -> QueueGauges:
        async with self.database.connection() as conn:
            return await _gauges(conn)

    async def queue_stats(self, now: float, *, minutes: int, errors: int) -> QueueStats:
        current_minute = int(now // 60)
        first_minute = current_minute - minutes + 1
        # One snapshot: the counts, the per-minute series and the errors agree with each other.
        async with self.database.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            gauges = await _gauges(conn)
            sent = {
                int(row["minute"]): int(row["count"])
                for row in await conn.fetch(
                    "SELECT floor(sent_at / 60) AS minute, count(*) AS count FROM notifications"
                    " WHERE sent_at IS NOT NULL AND sent_at >= $1 GROUP BY minute",
                    first_minute * 60.0,
                )
            }
            rows = await conn.fetch(
                "SELECT id, status, attempts, last_error, updated_at, request_id FROM notifications"
                f" WHERE last_error IS NOT NULL AND status <> '{Status.SENT}'"
                " ORDER BY updated_at DESC LIMIT $1",
                errors,
            )
            # The errors' partial index again, over its recent end.
            failed = {
                int(row["minute"]): int(row["count"])
                for row in await conn.fetch(
                    "SELECT floor(updated_at / 60) AS minute, count(*) AS count FROM notifications"
                    f" WHERE last_error IS NOT NULL AND status <> '{Status.SENT}' AND updated_at >= $1"
                    f" AND status = '{Status.FAILED}' GROUP BY minute",
                    first_minute * 60.0,
                )
            }
        return QueueStats.from_rows(gauges, range(first_minute, current_minute + 1), sent, failed, rows)
