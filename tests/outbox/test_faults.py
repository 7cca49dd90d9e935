"""The outbox when something goes wrong around it: a poisoned request, a closed store, a busy pool, a stalled
replica's late outcome, a rolling upgrade. Each of these was a bug found in review; each test failed first."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import asyncpg
import pytest

from service.domain import Status
from service.outbox import Outbox, OutboxUnavailable, read_migrations
from service.outbox.postgres import postgres_outbox
from service.outbox.postgres.database import PostgresDatabase
from service.outbox.postgres.notifications import PostgresNotificationStore
from service.outbox.sqlite import sqlite_outbox
from tests.outbox.backends import notification


async def test_a_request_that_cannot_be_stored_fails_alone_not_those_committed_with_it(tmp_path: Path) -> None:
    outbox = sqlite_outbox(tmp_path / "outbox.sqlite3")
    await outbox.open()
    try:
        good = notification()
        # A lone surrogate: no UTF-8 can store it (the API refuses it; the outbox must still contain the damage).
        bad = notification(subject="a\ud800b")
        store = outbox.notifications
        results = await asyncio.gather(store.add([good]), store.add([bad]), return_exceptions=True)
        assert results[0] is None
        assert isinstance(results[1], Exception)
        assert await store.get(good.id) is not None
        assert await store.get(bad.id) is None
    finally:
        await outbox.close()


async def test_an_outcome_that_cannot_be_stored_fails_alone_not_the_writes_committed_with_it(tmp_path: Path) -> None:
    # Outcomes are group-committed with each other and with inserts: one bad write must not take the others down.
    outbox = sqlite_outbox(tmp_path / "outbox.sqlite3")
    await outbox.open()
    try:
        store = outbox.notifications
        first, second = notification(), notification()
        await store.add([first, second])
        assert len(await store.claim(2, time.time())) == 2
        third = notification()
        now = time.time()
        results = await asyncio.gather(
            store.mark_sent(first.id, smtp_reply="250 \ud800", refused=[], now=now, attempt=1),
            store.mark_sent(second.id, smtp_reply="250 OK", refused=[], now=now, attempt=1),
            store.add([third]),
            return_exceptions=True,
        )
        assert isinstance(results[0], Exception)
        assert results[1:] == [None, None]
        assert [(await store.get(n.id)).status for n in (first, second, third)] == [  # type: ignore[union-attr]
            Status.SENDING,
            Status.SENT,
            Status.QUEUED,
        ]
    finally:
        await outbox.close()


async def test_a_write_waits_while_another_process_holds_the_lock_then_goes_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dispatcher's process writes to the same file: the HTTP process' commits wait for its lock, not fail.
    outbox = sqlite_outbox(tmp_path / "outbox.sqlite3")
    await outbox.open()
    blocker = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
    # The outbox's thread sleeps between tries while the lock is held: its first sleep says it met the lock.
    met_the_lock = threading.Event()
    real_sleep = time.sleep

    def sleep_between_tries(seconds: float) -> None:
        met_the_lock.set()
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep_between_tries)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        waiting = asyncio.create_task(outbox.notifications.add([added := notification()]))
        assert await asyncio.to_thread(met_the_lock.wait, 10)
        assert not waiting.done()
        blocker.execute("COMMIT")
        await asyncio.wait_for(waiting, timeout=5)
        assert await outbox.notifications.get(added.id) is not None
    finally:
        blocker.close()
        await outbox.close()


async def test_adding_to_a_closed_outbox_fails_instead_of_waiting_forever(tmp_path: Path) -> None:
    outbox = sqlite_outbox(tmp_path / "outbox.sqlite3")
    await outbox.open()
    await outbox.close()

    with pytest.raises(OutboxUnavailable):
        await asyncio.wait_for(outbox.notifications.add([notification()]), timeout=5)


async def test_the_postgresql_readiness_probe_answers_in_time_when_the_pool_is_busy(postgres_url: str) -> None:
    outbox = postgres_outbox(postgres_url, lease_seconds=30, pool_size=1)
    await outbox.open()
    assert isinstance(outbox.database, PostgresDatabase)
    try:
        async with outbox.database.connection():  # every pooled connection busy
            with pytest.raises(OutboxUnavailable):
                # Bounded by the probe's own timeout (2 s); this outer one only keeps a regression from hanging.
                await asyncio.wait_for(outbox.database.check_writable(), timeout=10)
    finally:
        await outbox.close()


async def test_a_stale_outcome_cannot_land_on_a_newer_claim_after_a_requeue(
    replicas: tuple[Outbox, Outbox],
) -> None:
    stalled, alive = (outbox.notifications for outbox in replicas)
    assert isinstance(stalled, PostgresNotificationStore)
    n = notification()
    await stalled.add([n])
    now = time.time()
    [mine] = await stalled.claim(1, now)
    later = now + stalled.lease_seconds + 1
    [taken] = await alive.claim(1, later)
    await alive.mark_failed(n.id, error="550 no", refused=[], now=later, attempt=taken.attempts)
    await alive.requeue_failed(n.id, later)  # attempts start again at 0
    [again] = await alive.claim(1, later)
    assert again.attempts == mine.attempts == 1

    await stalled.mark_sent(n.id, smtp_reply="250 stale", refused=[], now=later, attempt=mine.attempts)

    row = await alive.get(n.id)
    assert row is not None
    assert (row.status, row.smtp_reply) == (Status.SENDING, None)


async def wait_until_blocked(postgres_url: str, pid: int, timeout: float = 10.0) -> None:
    """Until the backend `pid` waits for a lock another transaction holds."""
    watcher = await asyncpg.connect(postgres_url)
    try:
        deadline = time.monotonic() + timeout
        query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1"
        while await watcher.fetchval(query, pid) != "Lock":
            assert time.monotonic() < deadline, f"backend {pid} never waited for a lock"
            await asyncio.sleep(0.01)
    finally:
        await watcher.close()


async def test_migration_0003_counts_rows_an_older_replica_commits_during_the_upgrade(postgres_url: str) -> None:
    migrations = read_migrations("postgres")
    setup = await asyncpg.connect(postgres_url)
    old = await asyncpg.connect(postgres_url)
    try:
        for number, _name, script in migrations:
            if number in (1, 2):
                await setup.execute(script)
        # A replica still on schema 2 has an insert open while the new one upgrades.
        transaction = old.transaction()
        await transaction.start()
        await old.execute(
            "INSERT INTO notifications (id, status, content, message_id, attempts, created_at, updated_at,"
            " next_attempt_at) VALUES ('n1', 'queued', '{}', 'm', 0, 1, 1, 1)"
        )
        [script] = [s for number, _n, s in migrations if number == 3]
        migrating = asyncio.create_task(setup.execute(f"BEGIN; {script} COMMIT;"))
        await wait_until_blocked(postgres_url, setup.get_server_pid())
        await transaction.commit()
        await migrating
        truth = await setup.fetchval("SELECT count(*) FROM notifications WHERE status = 'queued'")
        kept = await setup.fetchval("SELECT sum(count) FROM notification_counts WHERE status = 'queued'")
    finally:
        await old.close()
        await setup.close()

    assert kept == truth == 1


async def test_a_sqlite_outbox_is_owned_by_one_process_at_a_time(tmp_path: Path) -> None:
    first = sqlite_outbox(tmp_path / "outbox.sqlite3")
    await first.open()
    second = sqlite_outbox(tmp_path / "outbox.sqlite3")
    try:
        # A second owner would put the first one's live claims back in the queue at its start.
        with pytest.raises(OutboxUnavailable, match="in use by another process"):
            await second.open()
    finally:
        await first.close()

    third = sqlite_outbox(tmp_path / "outbox.sqlite3")
    await third.open()
    await third.close()


def _open_files_under(folder: Path) -> list[str]:
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith(str(folder)):
            found.append(str(target))
    return found


async def test_an_outbox_that_fails_to_open_leaves_nothing_open(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a SQLite database, it is a text file that happens to be here" * 100)
    outbox = sqlite_outbox(path)
    with pytest.raises(OutboxUnavailable, match="not a database"):
        await outbox.open()
    # Neither the database file nor its lock: a supervisor that retries the start leaks nothing per try.
    assert _open_files_under(tmp_path) == []
