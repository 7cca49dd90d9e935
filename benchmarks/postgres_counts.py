"""What the kept counts (postgres migration 0003) cost writers: mail through add -> claim -> mark_sent with
counts spread over 16 shards, with all counts in one row per status, and with no counts at all.

    .venv/bin/python -m benchmarks.postgres_counts [mails] [connections]

Needs the PostgreSQL at TEST_POSTGRES_URL (default: the local one); makes and drops a database per variant.
Prints mails per second and what one gauge read costs; asserts nothing.
"""

from __future__ import annotations

import asyncio
import sys
import time

from service.outbox.postgres import postgres_outbox
from service.outbox.postgres.database import PostgresDatabase
from tests.outbox.backends import notification
from tests.postgres import temporary_database

ONE_ROW = """
CREATE OR REPLACE FUNCTION notification_counts_add(changes jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE change record;
BEGIN
    FOR change IN SELECT key AS status, value::bigint AS delta FROM jsonb_each_text(changes) ORDER BY key LOOP
        IF change.delta <> 0 THEN
            UPDATE notification_counts SET count = count + change.delta WHERE status = change.status AND shard = 0;
        END IF;
    END LOOP;
END $$;
"""
ROW_LEVEL = """
DROP TRIGGER notification_counts_insert ON notifications;
DROP TRIGGER notification_counts_update ON notifications;
DROP TRIGGER notification_counts_delete ON notifications;
CREATE FUNCTION counts_row_move() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE this_shard smallint := txid_current() % 16;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        UPDATE notification_counts SET count = count - 1 WHERE status = OLD.status AND shard = this_shard;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        UPDATE notification_counts SET count = count + 1 WHERE status = NEW.status AND shard = this_shard;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER counts_insert AFTER INSERT ON notifications FOR EACH ROW EXECUTE FUNCTION counts_row_move();
CREATE TRIGGER counts_update AFTER UPDATE OF status ON notifications FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION counts_row_move();
"""
NO_COUNTS = """
DROP TRIGGER notification_counts_insert ON notifications;
DROP TRIGGER notification_counts_update ON notifications;
DROP TRIGGER notification_counts_delete ON notifications;
"""


async def run(variant: str, setup: str, mails: int, connections: int) -> None:
    async with temporary_database() as url:
        outbox = postgres_outbox(url, lease_seconds=300, pool_size=connections + 2)
        await outbox.open()
        assert isinstance(outbox.database, PostgresDatabase)
        notifications, stats = outbox.notifications, outbox.stats
        try:
            if setup:
                async with outbox.database.connection() as conn:
                    await conn.execute(setup)
            per_worker = mails // connections

            async def worker() -> None:
                for _ in range(per_worker):
                    n = notification()
                    await notifications.add([n])
                    for claimed in await notifications.claim(1, time.time()):
                        await notifications.mark_sent(
                            claimed.id, smtp_reply="250 ok", refused=[], now=time.time(), attempt=claimed.attempts
                        )

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - started
            reads = 200
            read_started = time.perf_counter()
            for _ in range(reads):
                await stats.queue_gauges()
            read_ms = (time.perf_counter() - read_started) / reads * 1000
            gauges = await stats.queue_gauges()
            print(
                f"{variant:>20}: {per_worker * connections / elapsed:7.0f} mails/s"
                f" ({connections} connections), gauge read {read_ms:.2f} ms, counts {gauges.counts}"
            )
        finally:
            await outbox.close()


async def main(mails: int, connections: int) -> None:
    for variant, setup in (
        ("16 shards (0003)", ""),
        ("one row per status", ONE_ROW),
        ("row-level, 16 shards", ROW_LEVEL),
        ("no counts", NO_COUNTS),
    ):
        await run(variant, setup, mails, connections)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 4000, int(sys.argv[2]) if len(sys.argv) > 2 else 16))
