"""Idempotency-Keys in the SQLite file: looked up and swept here, inserted in the notification store's add()."""

from __future__ import annotations

import json
import sqlite3

from service.outbox.idempotency import IdempotencyRecord, IdempotencyStore
from service.outbox.sqlite.database import SqliteDatabase


def insert_record(db: sqlite3.Connection, record: IdempotencyRecord, now: float) -> bool:
    """Inside the caller's transaction; False when the key is stored and not expired (an expired one is
    overwritten)."""
    return (
        db.execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, status_code, body, headers, created_at,"
            " expires_at) VALUES (:scope, :key, :fingerprint, :status_code, :body, :headers, :created_at,"
            " :expires_at)"
            " ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,"
            " status_code = excluded.status_code, body = excluded.body, headers = excluded.headers,"
            " created_at = excluded.created_at, expires_at = excluded.expires_at"
            " WHERE idempotency_keys.expires_at <= :now",
            {
                "scope": record.scope,
                "key": record.key,
                "fingerprint": record.fingerprint,
                "status_code": record.status_code,
                "body": record.body,
                "headers": json.dumps(record.headers),
                "created_at": record.created_at,
                "expires_at": record.expires_at,
                "now": now,
            },
        ).rowcount
        == 1
    )


class SqliteIdempotencyStore(IdempotencyStore):
    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database

    async def get(self, scope: str, key: str, now: float) -> IdempotencyRecord | None:
        def get(db: sqlite3.Connection) -> IdempotencyRecord | None:
            row = db.execute(
                "SELECT scope, key, fingerprint, status_code, body, headers, created_at, expires_at"
                " FROM idempotency_keys WHERE scope = ? AND key = ? AND expires_at > ?",
                (scope, key, now),
            ).fetchone()
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

        return await self.database.read(get)

    async def sweep(self, now: float) -> int:
        def sweep(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (now,)).rowcount

        return await self.database.write(sweep)
