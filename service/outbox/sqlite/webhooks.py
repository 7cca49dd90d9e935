"""The SQLite webhook store, and the event write the notification and job stores make inside an outcome's
transaction. One process sends from the file, so `recover` at start gives back everything left `sending`."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from service.outbox.sqlite.database import SqliteDatabase
from service.outbox.webhooks import (
    DELIVERED,
    GIVEN_UP,
    PENDING,
    SELECT_DELIVERIES,
    SENDING,
    Delivery,
    DeliveryPage,
    WebhookEvent,
    WebhookStore,
    deliveries_of,
    delivery_from_row,
)


def event_written(db: sqlite3.Connection, once: str) -> bool:
    """Whether the event sent at most once under the key `once` was written already."""
    return db.execute("SELECT 1 FROM webhook_events WHERE once = ?", (once,)).fetchone() is not None


def write_events(db: sqlite3.Connection, events: Sequence[WebhookEvent], urls: Sequence[str]) -> None:
    """Inside the caller's transaction: the events and one pending delivery per URL. An event whose `once` key
    was already written is left out, with its deliveries."""
    for event in events:
        inserted = db.execute(
            "INSERT INTO webhook_events (id, type, body, once, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (once) DO NOTHING",
            (event.id, event.type, event.body, event.once, event.created_at),
        ).rowcount
        if inserted:
            db.executemany(
                "INSERT INTO webhook_deliveries (id, event_id, url, status, attempts, next_attempt_at, created_at,"
                f" updated_at) VALUES (?, ?, ?, '{PENDING}', 0, ?, ?, ?)",
                [
                    (delivery_id, event_id, url, event.created_at, event.created_at, event.created_at)
                    for delivery_id, event_id, url in deliveries_of([event], urls)
                ],
            )


# An outcome lands only while the claim that made it still holds the delivery.
_STILL_CLAIMED = f"WHERE id = :id AND status = '{SENDING}' AND attempts = :attempt"


class SqliteWebhookStore(WebhookStore):
    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database

    async def recover(self, now: float) -> int:
        return await self.database.write(
            lambda db: (
                db.execute(
                    f"UPDATE webhook_deliveries SET status = '{PENDING}', lease_until = NULL, updated_at = ?"
                    f" WHERE status = '{SENDING}'",
                    (now,),
                ).rowcount
            )
        )

    async def claim(self, limit: int, now: float, lease_seconds: float) -> list[Delivery]:
        def claim(db: sqlite3.Connection) -> list[Delivery]:
            ids = [
                row[0]
                for row in db.execute(
                    f"SELECT seq FROM webhook_deliveries WHERE status = '{PENDING}' AND next_attempt_at <= :now"
                    f" UNION ALL SELECT seq FROM webhook_deliveries WHERE status = '{SENDING}' AND lease_until <= :now"
                    " LIMIT :limit",
                    {"now": now, "limit": limit},
                ).fetchall()
            ]
            if not ids:
                return []
            marks = ", ".join("?" * len(ids))
            db.execute(
                f"UPDATE webhook_deliveries SET status = '{SENDING}', attempts = attempts + 1, lease_until = ?,"
                f" updated_at = ? WHERE seq IN ({marks})",
                (now + lease_seconds, now, *ids),
            )
            rows = db.execute(f"{SELECT_DELIVERIES} WHERE d.seq IN ({marks})", ids).fetchall()
            return sorted((delivery_from_row(row) for row in rows), key=lambda d: (d.next_attempt_at, d.seq or 0))

        return await self.database.write(claim)

    async def _outcome(self, sql: str, params: dict[str, Any]) -> bool:
        return bool(await self.database.write(lambda db: db.execute(sql, params).rowcount))

    async def mark_delivered(self, delivery_id: str, *, attempt: int, response_code: int, now: float) -> bool:
        return await self._outcome(
            f"UPDATE webhook_deliveries SET status = '{DELIVERED}', response_code = :code, lease_until = NULL,"
            f" updated_at = :now {_STILL_CLAIMED}",
            {"id": delivery_id, "attempt": attempt, "code": response_code, "now": now},
        )

    async def mark_retry(
        self,
        delivery_id: str,
        *,
        attempt: int,
        error: str,
        response_code: int | None,
        next_attempt_at: float,
        now: float,
    ) -> bool:
        return await self._outcome(
            f"UPDATE webhook_deliveries SET status = '{PENDING}', last_error = :error, response_code = :code,"
            f" next_attempt_at = :next, lease_until = NULL, updated_at = :now {_STILL_CLAIMED}",
            {
                "id": delivery_id,
                "attempt": attempt,
                "error": error,
                "code": response_code,
                "next": next_attempt_at,
                "now": now,
            },
        )

    async def mark_failed(
        self, delivery_id: str, *, attempt: int, error: str, response_code: int | None, now: float
    ) -> bool:
        return await self._outcome(
            f"UPDATE webhook_deliveries SET status = '{GIVEN_UP}', last_error = :error, response_code = :code,"
            f" lease_until = NULL, updated_at = :now {_STILL_CLAIMED}",
            {"id": delivery_id, "attempt": attempt, "error": error, "code": response_code, "now": now},
        )

    async def retry(self, delivery_id: str, now: float) -> Delivery | None:
        def retry(db: sqlite3.Connection) -> Delivery | None:
            changed = db.execute(
                f"UPDATE webhook_deliveries SET status = '{PENDING}', attempts = 0, next_attempt_at = :now,"
                f" updated_at = :now WHERE id = :id AND status IN ('{DELIVERED}', '{GIVEN_UP}')",
                {"id": delivery_id, "now": now},
            ).rowcount
            if not changed:
                return None
            row = db.execute(f"{SELECT_DELIVERIES} WHERE d.id = ?", (delivery_id,)).fetchone()
            return delivery_from_row(row)

        return await self.database.write(retry)

    async def get(self, delivery_id: str) -> Delivery | None:
        def get(db: sqlite3.Connection) -> Delivery | None:
            row = db.execute(f"{SELECT_DELIVERIES} WHERE d.id = ?", (delivery_id,)).fetchone()
            return delivery_from_row(row) if row else None

        return await self.database.read(get)

    async def page(self, *, status: str | None, limit: int, cursor: str | None) -> DeliveryPage:
        before = int(cursor) if cursor else None

        def page(db: sqlite3.Connection) -> DeliveryPage:
            rows = db.execute(
                SELECT_DELIVERIES
                + " WHERE (:status IS NULL OR d.status = :status) AND (:before IS NULL OR d.seq < :before)"
                " ORDER BY d.seq DESC LIMIT :limit",
                {"status": status, "before": before, "limit": limit + 1},
            ).fetchall()
            items = [delivery_from_row(row) for row in rows[:limit]]
            more = len(rows) > limit
            return DeliveryPage(items=items, next_cursor=str(items[-1].seq) if more and items else None)

        return await self.database.read(page)

    async def oldest_waiting_at(self) -> float | None:
        def oldest(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                f"SELECT min(created_at) FROM webhook_deliveries WHERE status IN ('{PENDING}', '{SENDING}')"
            ).fetchone()
            return row[0] if row else None

        return await self.database.read(oldest)

    async def next_due_at(self) -> float | None:
        def next_due(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                f"SELECT min(at) FROM (SELECT min(next_attempt_at) AS at FROM webhook_deliveries"
                f" WHERE status = '{PENDING}' UNION ALL SELECT min(lease_until) FROM webhook_deliveries"
                f" WHERE status = '{SENDING}')"
            ).fetchone()
            return row[0] if row else None

        return await self.database.read(next_due)
