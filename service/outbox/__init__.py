"""The outbox: where an accepted notification lives, on disk, from the 202 until it is sent or failed.

One interface per store (notifications.py, idempotency.py, stats.py, jobs.py, suppressions.py, webhooks.py) and the
database under them (database.py), each implemented in sqlite/ and postgres/; SQL lives there and nowhere else.
A caller takes only the store it needs from the `Outbox` that `open_outbox` builds.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.config import Settings
from service.outbox.database import Database, read_migrations
from service.outbox.errors import IdempotencyKeyTaken, OutboxUnavailable, QueueFull
from service.outbox.idempotency import IdempotencyRecord, IdempotencyStore
from service.outbox.jobs import JobStore
from service.outbox.notifications import AttachmentInfo, Notification, NotificationStore, Page
from service.outbox.stats import StatsStore
from service.outbox.suppressions import Suppression, SuppressionPage, SuppressionStore
from service.outbox.webhooks import WebhookStore

__all__ = [
    "AttachmentInfo",
    "Database",
    "IdempotencyKeyTaken",
    "IdempotencyRecord",
    "IdempotencyStore",
    "JobStore",
    "Notification",
    "NotificationStore",
    "Outbox",
    "OutboxUnavailable",
    "Page",
    "QueueFull",
    "StatsStore",
    "Suppression",
    "SuppressionPage",
    "SuppressionStore",
    "WebhookStore",
    "describe_outbox",
    "open_outbox",
    "read_migrations",
]


@dataclass(frozen=True, slots=True)
class Outbox:
    """One database and the stores on it."""

    database: Database
    notifications: NotificationStore
    idempotency: IdempotencyStore
    stats: StatsStore
    jobs: JobStore
    suppressions: SuppressionStore
    webhooks: WebhookStore

    async def open(self) -> None:
        await self.database.open()

    async def close(self) -> None:
        await self.jobs.close()
        await self.database.close()


def open_outbox(settings: Settings, *, dispatcher_process: bool = False) -> Outbox:
    """PostgreSQL when OUTBOX_URL is set (several replicas share it), else the SQLite file at OUTBOX_PATH.

    `dispatcher_process` only for the dispatcher's own process: the SQLite file's lock is its parent's
    (inherited), and its statements run on the event loop (SqliteDatabase.on_loop)."""
    if settings.OUTBOX_URL is not None:
        from service.outbox.postgres import postgres_outbox

        return postgres_outbox(
            settings.OUTBOX_URL.get_secret_value(),
            lease_seconds=settings.LEASE_SECONDS,
            pool_size=settings.OUTBOX_POOL_SIZE,
            queue_limit=settings.QUEUE_LIMIT,
            webhook_urls=settings.webhook_urls(),
        )
    from service.outbox.sqlite import sqlite_outbox

    return sqlite_outbox(
        settings.OUTBOX_PATH,
        synchronous=settings.OUTBOX_SYNCHRONOUS,
        queue_limit=settings.QUEUE_LIMIT,
        lock=not dispatcher_process,
        on_loop=dispatcher_process,
        webhook_urls=settings.webhook_urls(),
    )


def describe_outbox(settings: Settings) -> str:
    """Where the outbox lives, for logs: the file, or the database URL without its password."""
    if settings.OUTBOX_URL is not None:
        from service.outbox.postgres.database import redact

        return redact(settings.OUTBOX_URL.get_secret_value())
    return str(settings.OUTBOX_PATH)
