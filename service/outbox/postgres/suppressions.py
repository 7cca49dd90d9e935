"""The PostgreSQL suppression store, and the hard-bounce write the notification store makes inside an outcome's
transaction."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from service.domain import Bounce, mailbox_key
from service.outbox.postgres.database import PostgresDatabase
from service.outbox.suppressions import (
    COLUMNS,
    HARD_BOUNCE_REASON,
    Suppression,
    SuppressionPage,
    SuppressionStore,
    suppression_from_row,
)

_BUMP = "UPDATE suppressions_version SET version = version + 1 WHERE id = 1"


async def record_bounces(conn: asyncpg.Connection, bounces: Sequence[Bounce], notification_id: str, now: float) -> None:
    """Inside the outcome's transaction: each hard bounce on the list (suppressing, or only recorded)."""
    await conn.executemany(
        "INSERT INTO suppressions (address_key, address, source, reason, smtp_reply, notification_id, suppressing,"
        " created_at) VALUES ($1, $2, 'hard_bounce', $3, $4, $5, $6, $7)"
        " ON CONFLICT (address_key) DO UPDATE SET source = excluded.source, reason = excluded.reason,"
        " smtp_reply = excluded.smtp_reply, notification_id = excluded.notification_id,"
        " created_at = excluded.created_at, suppressing = suppressions.suppressing OR excluded.suppressing",
        [
            (mailbox_key(b.address), b.address, HARD_BOUNCE_REASON, b.smtp_reply, notification_id, b.suppress, now)
            for b in bounces
        ],
    )
    await conn.execute(_BUMP)


class PostgresSuppressionStore(SuppressionStore):
    def __init__(self, database: PostgresDatabase) -> None:
        self.database = database

    async def suppress(self, address: str, *, reason: str, now: float) -> Suppression:
        async with self.database.connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO suppressions (address_key, address, source, reason, suppressing, created_at)"
                " VALUES ($1, $2, 'manual', $3, true, $4)"
                " ON CONFLICT (address_key) DO UPDATE SET address = excluded.address, source = excluded.source,"
                " reason = excluded.reason, suppressing = true, created_at = excluded.created_at"
                f" RETURNING {COLUMNS}",
                mailbox_key(address),
                address,
                reason,
                now,
            )
            await conn.execute(_BUMP)
        return suppression_from_row(row)

    async def lift(self, address: str) -> bool:
        async with self.database.connection() as conn, conn.transaction():
            result = await conn.execute("DELETE FROM suppressions WHERE address_key = $1", mailbox_key(address))
            removed: bool = result.split()[-1] != "0"
            if removed:
                await conn.execute(_BUMP)
        return removed

    async def get(self, address: str) -> Suppression | None:
        async with self.database.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {COLUMNS} FROM suppressions WHERE address_key = $1", mailbox_key(address)
            )
        return suppression_from_row(row) if row else None

    async def page(self, *, limit: int, cursor: str | None) -> SuppressionPage:
        before = int(cursor) if cursor else None
        async with self.database.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM suppressions WHERE ($1::bigint IS NULL OR seq < $1) ORDER BY seq DESC LIMIT $2",
                before,
                limit + 1,
            )
        items = [suppression_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return SuppressionPage(items=items, next_cursor=str(items[-1].seq) if more and items else None)

    async def version(self) -> int:
        async with self.database.connection() as conn:
            return int(await conn.fetchval("SELECT version FROM suppressions_version WHERE id = 1"))

    async def suppressing_keys(self) -> tuple[int, frozenset[str]]:
        # REPEATABLE READ: the version and the list from one snapshot.
        async with self.database.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            version = await conn.fetchval("SELECT version FROM suppressions_version WHERE id = 1")
            rows = await conn.fetch("SELECT address_key FROM suppressions WHERE suppressing")
        return int(version), frozenset(row[0] for row in rows)
