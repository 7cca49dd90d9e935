"""Idempotency-Keys in the PostgreSQL database: looked up and swept here, inserted in the notification store's
add()."""

from __future__ import annotations

import json

import asyncpg

from service.outbox.idempotency import IdempotencyRecord, IdempotencyStore
from service.outbox.postgres.database import PostgresDatabase


async def insert_record(conn: asyncpg.Connection, record: IdempotencyRecord, now: float) -> bool:
    """Inside the caller's transaction; False when the key is stored and not expired (an expired one is replaced).

    Two replicas inserting one key: the second waits on the first's row until that transaction ends, then
    finds it committed and live (taken) or rolled back (its own insert goes in).
    """
    inserted = await conn.fetchval(
        "INSERT INTO idempotency_keys (scope, key, fingerprint, status_code, body, headers, created_at,"
        " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,"
        " status_code = excluded.status_code, body = excluded.body, headers = excluded.headers,"
        " created_at = excluded.created_at, expires_at = excluded.expires_at"
        " WHERE idempotency_keys.expires_at <= $9"
        " RETURNING true",
        record.scope,
        record.key,
        record.fingerprint,
        record.status_code,
        record.body,
        json.dumps(record.headers),
        record.created_at,
        record.expires_at,
        now,
    )
    return bool(inserted)


class PostgresIdempotencyStore(IdempotencyStore):
    def __init__(self, database: PostgresDatabase) -> None:
        self.database = database

    async def get(self, scope: str, key: str, now: float) -> IdempotencyRecord | None:
        async with self.database.connection() as conn:
            row = await conn.fetchrow(
                "SELECT scope, key, fingerprint, status_code, body, headers, created_at, expires_at"
                " FROM idempotency_keys WHERE scope = $1 AND key = $2 AND expires_at > $3",
                scope,
                key,
                now,
            )
        if row is None:
            return None
        return IdempotencyRecord(
            scope=row["scope"],
            key=row["key"],
            fingerprint=row["fingerprint"],
            status_code=row["status_code"],
            body=bytes(row["body"]),
            headers=json.loads(row["headers"]),
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        )

    async def sweep(self, now: float) -> int:
        async with self.database.connection() as conn:
            result = await conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= $1", now)
        return int(result.split()[-1])
