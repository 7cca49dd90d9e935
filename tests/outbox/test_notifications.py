"""The outbox's contract, against both implementations: a real SQLite file and a real PostgreSQL database.

One parametrized fixture runs every contract test on both, so they cannot drift; what only one backend
promises (WAL mode, a locked file, leases shared by replicas) is tested beside, on that backend alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from service.outbox import Notification, Outbox, OutboxUnavailable
from service.outbox.postgres import PostgresOutbox
from service.outbox.rows import notification_from_row
from service.outbox.sqlite import SqliteOutbox, split_statements
from tests.postgres import latest_migration, temporary_database
from tests.smtp_sink import free_port

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


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", lambda **options: SqliteOutbox(tmp_path / "outbox.sqlite3", **options))
        return
    async with temporary_database() as url:
        yield Backend(
            "postgres", lambda **options: PostgresOutbox(url, lease_seconds=LEASE_SECONDS, pool_size=4, **options)
        )


@pytest.fixture
async def outbox(backend: Backend) -> AsyncIterator[Outbox]:
    store = backend.make()
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def sqlite_outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    store = SqliteOutbox(tmp_path / "outbox.sqlite3")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[PostgresOutbox, PostgresOutbox]]:
    """Two replicas' outboxes on one PostgreSQL database."""
    first = PostgresOutbox(postgres_url, lease_seconds=LEASE_SECONDS, pool_size=4)
    second = PostgresOutbox(postgres_url, lease_seconds=LEASE_SECONDS, pool_size=4)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


async def test_added_notifications_are_on_disk_when_add_returns(
    backend: Backend, outbox: Outbox, tmp_path: Path
) -> None:
    n = notification(cc=["c@example.com"], metadata={"k": "v"}, request_id="r1", html="<p>x</p>")

    await outbox.add([n])

    # An independent reader of the same store sees the committed row: it is stored, not buffered. (SQLite: a
    # plain connection to the file, since a second outbox may not open a file another one owns.)
    if backend.name == "sqlite":
        with contextlib.closing(sqlite3.connect(tmp_path / "outbox.sqlite3")) as db:
            db.row_factory = sqlite3.Row
            stored = notification_from_row(db.execute("SELECT * FROM notifications WHERE id = ?", (n.id,)).fetchone())
    else:
        other = backend.make()
        await other.open()
        try:
            stored = await other.get(n.id)
        finally:
            await other.close()
    assert stored is not None
    assert (stored.to, stored.cc, stored.metadata, stored.request_id, stored.html) == (
        n.to,
        n.cc,
        n.metadata,
        "r1",
        "<p>x</p>",
    )
    assert stored.status == "queued"
    assert stored.attempts == 0


async def test_the_file_is_in_wal_mode(tmp_path: Path, sqlite_outbox: Outbox) -> None:
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_claim_takes_due_notifications_once(outbox: Outbox) -> None:
    first, second = notification(), notification()
    await outbox.add([first, second])

    claimed = await outbox.claim(10, time.time())
    again = await outbox.claim(10, time.time())

    assert sorted(n.id for n in claimed) == sorted([first.id, second.id])
    assert all(n.status == "sending" and n.attempts == 1 for n in claimed)
    assert again == []


async def test_claim_respects_the_limit_and_the_due_time(outbox: Outbox) -> None:
    await outbox.add([notification() for _ in range(3)])
    [later] = await outbox.claim(1, time.time())
    await outbox.mark_retry(later.id, error="451 busy", next_attempt_at=time.time() + 60, now=time.time())

    claimed = await outbox.claim(10, time.time())

    assert len(claimed) == 2
    assert later.id not in {n.id for n in claimed}
    assert await outbox.next_due_at() == pytest.approx(time.time() + 60, abs=5)


async def test_release_gives_back_the_attempt(outbox: Outbox) -> None:
    n = notification()
    await outbox.add([n])
    await outbox.claim(1, time.time())

    await outbox.release([n.id])

    stored = await outbox.get(n.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == ("queued", 0)


async def test_a_retry_can_narrow_the_envelope_and_replace_the_refusals(outbox: Outbox) -> None:
    n = notification(to=["ada@example.com", "grey@example.com"], cc=["gone@example.com"])
    await outbox.add([n])
    [claimed] = await outbox.claim(1, time.time())
    refused = [
        {"address": "grey@example.com", "code": 451, "message": "greylisted"},
        {"address": "gone@example.com", "code": 550, "message": "no such user"},
    ]

    await outbox.mark_retry(
        n.id,
        error="refused for now",
        next_attempt_at=time.time(),
        now=time.time(),
        attempt=claimed.attempts,
        envelope=["grey@example.com"],
        refused=refused,
    )
    [again] = await outbox.claim(1, time.time())
    await outbox.mark_retry(n.id, error="451 again", next_attempt_at=time.time(), now=time.time())

    assert again.envelope == ["grey@example.com"]
    assert again.refused_recipients == refused
    assert (again.to, again.cc) == (n.to, n.cc)
    stored = await outbox.get(n.id)
    assert stored is not None
    # A retry without an envelope or refusals leaves both as they were.
    assert (stored.envelope, stored.refused_recipients) == (["grey@example.com"], refused)


async def test_mark_sent_and_failed_record_the_outcome(outbox: Outbox) -> None:
    good, bad = notification(), notification()
    await outbox.add([good, bad])
    await outbox.claim(2, time.time())
    refused = [{"address": "x@example.com", "code": 550, "message": "no"}]

    await outbox.mark_sent(good.id, smtp_reply="250 OK", refused=refused, now=time.time())
    await outbox.mark_failed(bad.id, error="550 rejected", refused=[], now=time.time())

    sent, failed = await outbox.get(good.id), await outbox.get(bad.id)
    assert sent is not None
    assert failed is not None
    assert (sent.status, sent.smtp_reply, sent.refused_recipients) == ("sent", "250 OK", refused)
    assert sent.sent_at is not None
    assert (failed.status, failed.last_error) == ("failed", "550 rejected")


async def test_requeue_only_takes_failed_notifications(outbox: Outbox) -> None:
    failed, queued = notification(), notification()
    await outbox.add([failed, queued])
    await outbox.claim(1, time.time())
    await outbox.mark_failed(failed.id, error="550", refused=[], now=time.time())

    requeued = await outbox.requeue_failed(failed.id, time.time())

    assert requeued is not None
    assert (requeued.status, requeued.attempts) == ("queued", 0)
    assert await outbox.requeue_failed(queued.id, time.time()) is None
    assert await outbox.requeue_failed("missing", time.time()) is None


async def test_recover_puts_abandoned_claims_back_in_the_queue(backend: Backend) -> None:
    crashed = backend.make()
    await crashed.open()
    long_ago = time.time() - 2 * LEASE_SECONDS
    n = notification(created_at=long_ago)
    await crashed.add([n])
    # Claimed long ago: the claim's lease has run out, as a dead replica's would.
    await crashed.claim(1, long_ago)
    await crashed.close()

    restarted = backend.make()
    await restarted.open()
    try:
        assert await restarted.recover() == 1
        stored = await restarted.get(n.id)
        assert stored is not None
        assert stored.status == "queued"
        assert [c.id for c in await restarted.claim(5, time.time())] == [n.id]
    finally:
        await restarted.close()


async def test_an_outcome_from_a_claim_that_was_taken_over_is_ignored(outbox: Outbox) -> None:
    n = notification()
    await outbox.add([n])
    [first] = await outbox.claim(1, time.time())
    await outbox.mark_retry(n.id, error="451 busy", next_attempt_at=time.time(), now=time.time(), attempt=1)
    [second] = await outbox.claim(1, time.time())

    # The first claim's late writes land nowhere: the row belongs to the second claim now.
    await outbox.mark_failed(n.id, error="late", refused=[], now=time.time(), attempt=first.attempts)
    await outbox.mark_sent(n.id, smtp_reply="250 late", refused=[], now=time.time(), attempt=first.attempts)
    still = await outbox.get(n.id)
    await outbox.mark_sent(n.id, smtp_reply="250 OK", refused=[], now=time.time(), attempt=second.attempts)
    done = await outbox.get(n.id)

    assert still is not None
    assert done is not None
    assert (still.status, still.attempts, still.smtp_reply) == ("sending", 2, None)
    assert (done.status, done.smtp_reply) == ("sent", "250 OK")


async def test_pages_are_newest_first_and_filtered(outbox: Outbox) -> None:
    items = [notification() for _ in range(5)]
    for n in items:
        await outbox.add([n])

    first = await outbox.page(status=None, limit=2, cursor=None)
    second = await outbox.page(status=None, limit=2, cursor=first.next_cursor)
    last = await outbox.page(status=None, limit=2, cursor=second.next_cursor)
    nothing = await outbox.page(status="sent", limit=10, cursor=None)

    assert [n.id for n in first.items + second.items + last.items] == [n.id for n in reversed(items)]
    assert last.next_cursor is None
    assert nothing.items == []


async def test_many_concurrent_adds_are_all_committed(outbox: Outbox) -> None:
    batch = [notification() for _ in range(200)]
    await asyncio.gather(*(outbox.add([n]) for n in batch))

    page = await outbox.page(status="queued", limit=500, cursor=None)
    assert len(page.items) == 200


async def test_a_locked_file_is_reported_unwritable(tmp_path: Path, sqlite_outbox: Outbox) -> None:
    blocker = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OutboxUnavailable):
            await sqlite_outbox.check_writable()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await sqlite_outbox.check_writable()


async def test_migrations_run_once_and_record_the_version(backend: Backend) -> None:
    for _ in range(2):
        store = backend.make()
        await store.open()
        assert await store.schema_version() == latest_migration(backend.name)
        await store.check_writable()
        await store.close()


@pytest.mark.parametrize(("setting", "level"), [("NORMAL", 1), ("FULL", 2)])
async def test_outbox_synchronous_decides_when_sqlite_syncs_to_disk(tmp_path: Path, setting: str, level: int) -> None:
    store = SqliteOutbox(tmp_path / "outbox.sqlite3", synchronous=setting)
    await store.open()
    try:
        # The pragma is per connection: ask the outbox's own, not a second one.
        assert await store._run(lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == level
    finally:
        await store.close()


# -- PostgreSQL only: several replicas on one database -------------------------------------------------------


async def test_replicas_claiming_at_once_never_take_the_same_notification(
    replicas: tuple[PostgresOutbox, PostgresOutbox],
) -> None:
    first, second = replicas
    await first.add([notification() for _ in range(300)])

    async def drain(outbox: Outbox) -> list[str]:
        taken: list[str] = []
        while claimed := await outbox.claim(7, time.time()):
            taken += [n.id for n in claimed]
        return taken

    by_first, by_second = await asyncio.gather(drain(first), drain(second))

    assert len(by_first) + len(by_second) == 300
    assert set(by_first).isdisjoint(by_second)


async def test_a_live_claim_is_neither_recovered_nor_claimed_by_another_replica(
    replicas: tuple[PostgresOutbox, PostgresOutbox],
) -> None:
    first, second = replicas
    n = notification()
    await first.add([n])
    await first.claim(1, time.time())

    # The second replica starting up must not steal the first one's claim while its lease runs.
    assert await second.recover() == 0
    assert await second.claim(10, time.time()) == []
    # The claim's lease end is when the store next has something due.
    assert await second.next_due_at() == pytest.approx(time.time() + LEASE_SECONDS, abs=5)


async def test_another_replica_takes_over_a_claim_whose_lease_ran_out(
    replicas: tuple[PostgresOutbox, PostgresOutbox],
) -> None:
    dead, alive = replicas
    n = notification()
    await dead.add([n])
    [lost] = await dead.claim(1, time.time())

    [taken] = await alive.claim(10, time.time() + LEASE_SECONDS + 1)
    # The first replica's late outcome and its shutdown's give-back both miss: the claim is not its any more.
    await dead.mark_sent(n.id, smtp_reply="250 too late", refused=[], now=time.time(), attempt=lost.attempts)
    await dead.release([n.id])
    await alive.mark_sent(n.id, smtp_reply="250 OK", refused=[], now=time.time(), attempt=taken.attempts)

    stored = await alive.get(n.id)
    assert (taken.id, taken.attempts) == (n.id, 2)
    assert stored is not None
    assert (stored.status, stored.smtp_reply, stored.attempts) == ("sent", "250 OK", 2)


async def test_an_insert_by_one_replica_wakes_the_others(replicas: tuple[PostgresOutbox, PostgresOutbox]) -> None:
    first, second = replicas
    woken = asyncio.Event()
    # The listener wakes its subscribers once when it connects (it may have missed something): let that pass.
    await asyncio.sleep(0.5)
    second.subscribe(woken.set)

    await first.add([notification()])

    async with asyncio.timeout(5):
        await woken.wait()


async def test_replicas_opening_together_apply_each_migration_once(postgres_url: str) -> None:
    stores = [PostgresOutbox(postgres_url, lease_seconds=LEASE_SECONDS, pool_size=2) for _ in range(4)]

    await asyncio.gather(*(store.open() for store in stores))
    try:
        versions = [await store.schema_version() for store in stores]
    finally:
        await asyncio.gather(*(store.close() for store in stores))

    conn = await asyncpg.connect(postgres_url)
    try:
        applied = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert versions == [latest_migration("postgres")] * 4
    assert [row["version"] for row in applied] == list(range(1, latest_migration("postgres") + 1))


async def test_an_unreachable_database_is_reported_at_open() -> None:
    store = PostgresOutbox(f"postgresql://postgres@127.0.0.1:{free_port()}/none", lease_seconds=LEASE_SECONDS)

    with pytest.raises(OutboxUnavailable):
        await store.open()


def test_migration_statements_are_split_whole_even_with_triggers_and_comments() -> None:
    script = """-- a comment; with a semicolon
CREATE TABLE t (a INTEGER);
CREATE TRIGGER t_insert AFTER INSERT ON t
BEGIN
    UPDATE t SET a = a + 1;  -- inner statement
    UPDATE t SET a = a - 1;
END;
INSERT INTO t VALUES (';');
-- trailing comment
"""

    statements = split_statements(script)

    assert len(statements) == 3
    assert statements[1].startswith("CREATE TRIGGER")
    assert statements[1].endswith("END;")
    db = sqlite3.connect(":memory:")
    for statement in statements:
        db.execute(statement)
    assert db.execute("SELECT count(*) FROM t").fetchone() == (1,)
