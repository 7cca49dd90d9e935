"""How much one /metrics scrape and one /v1/stats call cost the outbox, with many rows in it.

    .venv/bin/python -m benchmarks.stats_scrape [rows]

Prints timings; asserts nothing (timing belongs here, not in tests).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

from service.domain import Status
from service.outbox import Notification
from service.outbox.sqlite import sqlite_outbox
from service.outbox.sqlite.database import SqliteDatabase


def _notification(created_at: float) -> Notification:
    notification_id = str(uuid.uuid4())
    return Notification(
        id=notification_id,
        to=["ada@example.com"],
        subject="Hello",
        text="Hi",
        message_id=f"<{notification_id}@example.com>",
        created_at=created_at,
    )


async def main(rows: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        outbox = sqlite_outbox(Path(folder) / "outbox.sqlite3")
        await outbox.open()
        notifications, stats, database = outbox.notifications, outbox.stats, outbox.database
        assert isinstance(database, SqliteDatabase)
        now = time.time()
        started = time.perf_counter()
        for start in range(0, rows, 10_000):
            await notifications.add(
                [_notification(now - 3600 + i * 0.01) for i in range(start, min(rows, start + 10_000))]
            )
        print(f"added {rows} rows in {time.perf_counter() - started:.1f}s")
        # Most of them sent over the last hour, some failed, the rest left queued: a busy day's outbox.
        started = time.perf_counter()
        while claimed := await notifications.claim(1000, now):
            if len(claimed) < 1000 and (await stats.queue_gauges()).counts[Status.QUEUED] == 0:
                break
            for i, n in enumerate(claimed):
                if i % 50 == 0:
                    await notifications.mark_failed(n.id, error="550 no", refused=[], now=now - (i % 3600))
                else:
                    await notifications.mark_sent(n.id, smtp_reply="250 ok", refused=[], now=now - (i % 3600))
            if (await stats.queue_gauges()).counts[Status.QUEUED] < rows // 10:
                break
        print(f"sent/failed most of them in {time.perf_counter() - started:.1f}s")
        print("counts:", {str(status): count for status, count in (await stats.queue_gauges()).counts.items()})
        for name, call in [
            ("queue_gauges (one /metrics scrape)", lambda: stats.queue_gauges()),
            ("queue_stats (one /v1/stats)", lambda: stats.queue_stats(time.time(), minutes=15, errors=10)),
            (
                "for comparison, counting per status with GROUP BY",
                lambda: database.read(
                    lambda db: db.execute("SELECT status, count(*) FROM notifications GROUP BY status").fetchall()
                ),
            ),
        ]:
            runs = 200
            started = time.perf_counter()
            for _ in range(runs):
                await call()
            print(f"{name}: {(time.perf_counter() - started) / runs * 1000:.2f} ms")
        await outbox.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
