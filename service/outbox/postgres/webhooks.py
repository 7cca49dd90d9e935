"""The PostgreSQL webhook store, and the event write the notification and job stores make inside an outcome's
transaction. Every replica's senders claim with `FOR UPDATE SKIP LOCKED` under a lease, so each delivery goes
out once (bar a sender that dies mid-request: its lease runs out and another replica sends it again)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from service.outbox.postgres.database import PostgresDatabase
from service.outbox.webhooks import (
    DELIVERED,
    DELIVERY_COLUMNS,
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


async def event_written(conn: asyncpg.Connection, once: str) -> bool:
    """Whether the event sent at most once under the key `once` was written already."""
    return await conn.fetchval("SELECT 1 FROM webhook_events WHERE once = $1", once) is not None


async def write_events(conn: asyncpg.Connection, events: Sequence[WebhookEvent], urls: Sequence[str]) -> None:
    """Inside the caller's transaction: the events and one pending delivery per URL. An event whose `once` key
    was already written is left out, with its deliveries."""
    for event in events:
        inserted = await conn.execute(
            "INSERT INTO webhook_events (id, type, body, once, created_at) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (once) DO NOTHING",
            event.id,
            event.type,
            event.body,
            event.once,
            event.created_at,
        )
        if inserted.split()[-1] != "0":
            await conn.executemany(
                "INSERT INTO webhook_deliveries (id, event_id, url, status, attempts, next_attempt_at, created_at,"
                f" updated_at) VALUES ($1, $2, $3, '{PENDING}', 0, $4, $4, $4)",
                [
                    (delivery_id, event_id, url, event.created_at)
                    for delivery_id, event_id, url in deliveries_of([event], urls)
                ],
            )


# An outcome lands only while the claim that made it still holds the delivery.
_STILL_CLAIMED = f"WHERE id = $1 AND status = '{SENDING}' AND attempts = $2"


class PostgresWebhookStore(WebhookStore):
    def __init__(self, database: PostgresDatabase) -> None:
        self.database = database

    async def recover(self, now: float) -> int:
        # Other replicas may be sending right now: only leases that ran out are given back (claim would take
        # them too; this only makes them visible as pending at once).
        async with self.database.connection() as conn:
            result = await conn.execute(
                f"UPDATE webhook_deliveries SET status = '{PENDING}', lease_until = NULL, updated_at = $1"
                f" WHERE status = '{SENDING}' AND lease_until <= $1",
                now,
            )
        return int(result.split()[-1])

    async def claim(self, limit: int, now: float, lease_seconds: float) -> list[Delivery]:
        async with self.database.connection() as conn:
            rows = await conn.fetch(
                "WITH expired AS ("
                f"  SELECT seq FROM webhook_deliveries WHERE status = '{SENDING}' AND lease_until <= $1"
                "   ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED),"
                " due AS ("
                f"  SELECT seq FROM webhook_deliveries WHERE status = '{PENDING}' AND next_attempt_at <= $1"
                "   ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED),"
                " claimed AS ("
                f"  UPDATE webhook_deliveries AS d SET status = '{SENDING}', attempts = d.attempts + 1,"
                "   lease_until = $1::double precision + $3::double precision, updated_at = $1"
                "   FROM (SELECT seq FROM expired UNION ALL SELECT seq FROM due LIMIT $2) AS picked"
                "   WHERE d.seq = picked.seq RETURNING d.*)"
                f" SELECT {DELIVERY_COLUMNS} FROM claimed AS d JOIN webhook_events AS e ON e.id = d.event_id",
                now,
                limit,
                lease_seconds,
            )
        return sorted((delivery_from_row(row) for row in rows), key=lambda d: (d.next_attempt_at, d.seq or 0))

    async def _outcome(self, sql: str, *args: Any) -> bool:
        async with self.database.connection() as conn:
            result: str = await conn.execute(sql, *args)
        return result.split()[-1] != "0"

    async def mark_delivered(self, delivery_id: str, *, attempt: int, response_code: int, now: float) -> bool:
        return await self._outcome(
            f"UPDATE webhook_deliveries SET status = '{DELIVERED}', response_code = $3, lease_until = NULL,"
            f" updated_at = $4 {_STILL_CLAIMED}",
            delivery_id,
            attempt,
            response_code,
            now,
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
            f"UPDATE webhook_deliveries SET status = '{PENDING}', last_error = $3, response_code = $4,"
            f" next_attempt_at = $5, lease_until = NULL, updated_at = $6 {_STILL_CLAIMED}",
            delivery_id,
            attempt,
            error,
            response_code,
            next_attempt_at,
            now,
        )

    async def mark_failed(
        self, delivery_id: str, *, attempt: int, error: str, response_code: int | None, now: float
    ) -> bool:
        return await self._outcome(
            f"UPDATE webhook_deliveries SET status = '{GIVEN_UP}', last_error = $3, response_code = $4,"
            f" lease_until = NULL, updated_at = $5 {_STILL_CLAIMED}",
            delivery_id,
            attempt,
            error,
            response_code,
            now,
        )

    async def retry(self, delivery_id: str, now: float) -> Delivery | None:
        async with self.database.connection() as conn:
            row = await conn.fetchrow(
                f"WITH changed AS (UPDATE webhook_deliveries SET status = '{PENDING}', attempts = 0,"
                f"  next_attempt_at = $2, updated_at = $2 WHERE id = $1 AND status IN ('{DELIVERED}', '{GIVEN_UP}')"
                "  RETURNING *)"
                f" SELECT {DELIVERY_COLUMNS} FROM changed AS d JOIN webhook_events AS e ON e.id = d.event_id",
                delivery_id,
                now,
            )
        return delivery_from_row(row) if row else None

    async def get(self, delivery_id: str) -> Delivery | None:
        async with self.database.connection() as conn:
            row = await conn.fetchrow(f"{SELECT_DELIVERIES} WHERE d.id = $1", delivery_id)
        return delivery_from_row(row) if row else None

    async def page(self, *, status: str | None, limit: int, cursor: str | None) -> DeliveryPage:
        async with self.database.connection() as conn:
            rows = await conn.fetch(
                SELECT_DELIVERIES + " WHERE ($1::text IS NULL OR d.status = $1) AND ($2::bigint IS NULL OR d.seq < $2)"
                " ORDER BY d.seq DESC LIMIT $3",
                status,
                int(cursor) if cursor else None,
                limit + 1,
            )
        items = [delivery_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return DeliveryPage(items=items, next_cursor=str(items[-1].seq) if more and items else None)

    async def oldest_waiting_at(self) -> float | None:
        async with self.database.connection() as conn:
            oldest = await conn.fetchval(
                f"SELECT min(created_at) FROM webhook_deliveries WHERE status IN ('{PENDING}', '{SENDING}')"
            )
        return float(oldest) if oldest is not None else None

    async def next_due_at(self) -> float | None:
        async with self.database.connection() as conn:
            due = await conn.fetchval(
                "SELECT least("
                f" (SELECT min(next_attempt_at) FROM webhook_deliveries WHERE status = '{PENDING}'),"
                f" (SELECT min(lease_until) FROM webhook_deliveries WHERE status = '{SENDING}'))"
            )
        return float(due) if due is not None else None
