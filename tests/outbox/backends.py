"""The two backends every store's contract runs on, a real SQLite file and a real PostgreSQL database, and a
notification to store in them (the fixtures are in conftest.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from service.outbox import JobStore, Notification, Outbox
from service.outbox.postgres.database import PostgresDatabase
from service.outbox.postgres.jobs import PostgresJobStore
from service.outbox.sqlite.database import SqliteDatabase
from service.outbox.sqlite.jobs import SqliteJobStore

LEASE_SECONDS = 300.0


def notification(**overrides: object) -> Notification:
    notification_id = str(uuid.uuid4())
    values: dict[str, object] = {
        "id": notification_id,
        "to": ["ada@example.com"],
        "subject": "Hello",
        "text": "Hi",
        "message_id": f"<{notification_id}@example.com>",
        "created_at": time.time(),
    }
    values.update(overrides)
    return Notification(**values)  # type: ignore[arg-type]


class Backend:
    """Makes outboxes on one store: each call is another process (replica) opening the same file or database."""

    def __init__(self, name: str, make: Callable[..., Outbox]) -> None:
        self.name = name
        # make(queue_limit=...) passes the store's options on.
        self.make = make

    def __repr__(self) -> str:
        return self.name


def another_job_store(outbox: Outbox) -> JobStore:
    """A second job store on the outbox's database: what a restarted process opens."""
    if isinstance(outbox.database, SqliteDatabase):
        return SqliteJobStore(outbox.database)
    assert isinstance(outbox.database, PostgresDatabase)
    return PostgresJobStore(outbox.database)
