"""The outbox in one SQLite file, owned by one service (its dispatcher's process shares the lock)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from service.outbox import Outbox
from service.outbox.sqlite.database import SqliteDatabase
from service.outbox.sqlite.idempotency import SqliteIdempotencyStore
from service.outbox.sqlite.jobs import SqliteJobStore
from service.outbox.sqlite.notifications import SqliteNotificationStore
from service.outbox.sqlite.stats import SqliteStatsStore
from service.outbox.sqlite.suppressions import SqliteSuppressionStore
from service.outbox.sqlite.webhooks import SqliteWebhookStore


def sqlite_outbox(
    path: Path | str,
    *,
    synchronous: str = "NORMAL",
    queue_limit: int | None = None,
    lock: bool = True,
    on_loop: bool = False,
    webhook_urls: Sequence[str] = (),
) -> Outbox:
    """The stores on the SQLite file at `path` (not opened yet); with `webhook_urls`, outcomes write events."""
    database = SqliteDatabase(path, synchronous=synchronous, lock=lock, on_loop=on_loop)
    return Outbox(
        database=database,
        notifications=SqliteNotificationStore(database, queue_limit=queue_limit, webhook_urls=webhook_urls),
        idempotency=SqliteIdempotencyStore(database),
        stats=SqliteStatsStore(database),
        suppressions=SqliteSuppressionStore(database),
        jobs=SqliteJobStore(database, webhook_urls=webhook_urls),
        webhooks=SqliteWebhookStore(database),
    )
