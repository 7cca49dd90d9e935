"""The outbox in one PostgreSQL database shared by every replica of the service."""

from __future__ import annotations

from collections.abc import Sequence

from service.outbox import Outbox
from service.outbox.postgres.database import PostgresDatabase
from service.outbox.postgres.idempotency import PostgresIdempotencyStore
from service.outbox.postgres.jobs import PostgresJobStore
from service.outbox.postgres.notifications import PostgresNotificationStore
from service.outbox.postgres.stats import PostgresStatsStore
from service.outbox.postgres.suppressions import PostgresSuppressionStore
from service.outbox.postgres.webhooks import PostgresWebhookStore


def postgres_outbox(
    url: str,
    *,
    lease_seconds: float,
    pool_size: int = 10,
    queue_limit: int | None = None,
    webhook_urls: Sequence[str] = (),
) -> Outbox:
    """The stores on the PostgreSQL database at `url` (not opened yet); with `webhook_urls`, outcomes write events."""
    database = PostgresDatabase(url, pool_size=pool_size)
    return Outbox(
        database=database,
        notifications=PostgresNotificationStore(
            database, lease_seconds=lease_seconds, queue_limit=queue_limit, webhook_urls=webhook_urls
        ),
        idempotency=PostgresIdempotencyStore(database),
        stats=PostgresStatsStore(database),
        suppressions=PostgresSuppressionStore(database),
        jobs=PostgresJobStore(database, webhook_urls=webhook_urls),
        webhooks=PostgresWebhookStore(database),
    )
