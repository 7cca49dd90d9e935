"""The SQLite suppression store, and the hard-bounce write the notification store makes inside an outcome's
transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from service.domain import Bounce, mailbox_key
from service.outbox.sqlite.database import SqliteDatabase
from service.outbox.suppressions import (
    COLUMNS,
    HARD_BOUNCE_REASON,
    Suppression,
    SuppressionPage,
    SuppressionStore,
    suppression_from_row,
)

_BUMP = "UPDATE suppressions_version SET version = version + 1 WHERE id = 1"


def record_bounces(db: sqlite3.Connection, bounces: Sequence[Bounce], notification_id: str, now: float) -> None:
    """Inside the outcome's transaction: each hard bounce on the list (suppressing, or only recorded)."""
    db.executemany(
        "INSERT INTO suppressions (address_key, address, source, reason, smtp_reply, notification_id, suppressing,"
        " created_at) VALUES (?, ?, 'hard_bounce', ?, ?, ?, ?, ?)"
        " ON CONFLICT (address_key) DO UPDATE SET source = excluded.source, reason = excluded.reason,"
        " smtp_reply = excluded.smtp_reply, notification_id = excluded.notification_id,"
        " created_at = excluded.created_at, suppressing = max(suppressing, excluded.suppressing)",
        [
            (mailbox_key(b.address), b.address, HARD_BOUNCE_REASON, b.smtp_reply, notification_id, b.suppress, now)
            for b in bounces
        ],
    )
    db.execute(_BUMP)


class SqliteSuppressionStore(SuppressionStore):
    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database

    async def suppress(self, address: str, *, reason: str, now: float) -> Suppression:
        def suppress(db: sqlite3.Connection) -> Suppression:
            row = db.execute(
                "INSERT INTO suppressions (address_key, address, source, reason, suppressing, created_at)"
                " VALUES (?, ?, 'manual', ?, 1, ?)"
                " ON CONFLICT (address_key) DO UPDATE SET address = excluded.address, source = excluded.source,"
                " reason = excluded.reason, suppressing = 1, created_at = excluded.created_at"
                f" RETURNING {COLUMNS}",
                (mailbox_key(address), address, reason, now),
            ).fetchone()
            db.execute(_BUMP)
            return suppression_from_row(row)

        return await self.database.write(suppress)

    async def lift(self, address: str) -> bool:
        def lift(db: sqlite3.Connection) -> bool:
            removed = db.execute("DELETE FROM suppressions WHERE address_key = ?", (mailbox_key(address),)).rowcount
            if removed:
                db.execute(_BUMP)
            return bool(removed)

        return await self.database.write(lift)

    async def get(self, address: str) -> Suppression | None:
        def get(db: sqlite3.Connection) -> Suppression | None:
            row = db.execute(
                f"SELECT {COLUMNS} FROM suppressions WHERE address_key = ?", (mailbox_key(address),)
            ).fetchone()
            return suppression_from_row(row) if row else None

        return await self.database.read(get)

    async def page(self, *, limit: int, cursor: str | None) -> SuppressionPage:
        before = int(cursor) if cursor else None

        def page(db: sqlite3.Connection) -> SuppressionPage:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM suppressions WHERE (:before IS NULL OR seq < :before)"
                " ORDER BY seq DESC LIMIT :limit",
                {"before": before, "limit": limit + 1},
            ).fetchall()
            items = [suppression_from_row(row) for row in rows[:limit]]
            more = len(rows) > limit
            return SuppressionPage(items=items, next_cursor=str(items[-1].seq) if more and items else None)

        return await self.database.read(page)

    async def version(self) -> int:
        return int(
            await self.database.read(
                lambda db: db.execute("SELECT version FROM suppressions_version WHERE id = 1").fetchone()[0]
            )
        )

    async def suppressing_keys(self) -> tuple[int, frozenset[str]]:
        def keys(db: sqlite3.Connection) -> tuple[int, frozenset[str]]:
            # One read transaction, so the version names exactly this list.
            db.execute("BEGIN")
            try:
                version = db.execute("SELECT version FROM suppressions_version WHERE id = 1").fetchone()[0]
                rows = db.execute("SELECT address_key FROM suppressions WHERE suppressing").fetchall()
            finally:
                db.execute("COMMIT")
            return int(version), frozenset(row[0] for row in rows)

        return await self.database.read(keys)
