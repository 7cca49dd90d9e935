"""Fill an outbox with due notifications while no service runs, through the service's own store and builder
(the rows are exactly what the intake writes): the drain of `make bench` then starts the service on it.

    python -m benchmarks.fill_outbox COUNT     # OUTBOX_PATH (SQLite) or OUTBOX_URL (PostgreSQL) from the env
"""

from __future__ import annotations

import asyncio
import json
import sys

from benchmarks.bench import BODY
from service.config import Settings
from service.intake.accept import build_notification
from service.intake.request import NotificationRequest
from service.outbox import open_outbox

CHUNK = 1_000


async def fill(count: int) -> None:
    # No queue limit: the point is a backlog bigger than any one burst.
    settings = Settings(QUEUE_LIMIT=count + 1)
    outbox = open_outbox(settings)
    await outbox.open()
    try:
        request = NotificationRequest.model_validate(json.loads(BODY))
        for start in range(0, count, CHUNK):
            batch = [build_notification(request, settings, None) for _ in range(min(CHUNK, count - start))]
            for notification in batch:
                notification.updated_at = notification.next_attempt_at = notification.created_at
            await outbox.notifications.add(batch)
    finally:
        await outbox.close()


if __name__ == "__main__":
    asyncio.run(fill(int(sys.argv[1])))
