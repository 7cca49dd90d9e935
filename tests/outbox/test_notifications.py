"""The notification store's contract, against both backends: a real SQLite file and a real PostgreSQL database.

The `backend` fixture (conftest.py) runs every contract test on both, so they cannot drift; what only one
backend promises (the SQLite file's durability settings, leases shared by replicas) is tested beside, on that
backend alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from pathlib import Path

import pytest

from service.domain import Refusal, Status
from service.outbox import NotificationStore, Outbox
from service.outbox.rows import notification_from_row
from service.outbox.sqlite import sqlite_outbox
from service.outbox.sqlite.database import SqliteDatabase
from tests.outbox.backends import LEASE_SECONDS, Backend, notification


async def test_added_notifications_are_on_disk_when_add_returns(
    backend: Backend, notifications: NotificationStore, tmp_path: Path
) -> None:
    n = notification(cc=["c@example.com"], metadata={"k": "v"}, request_id="r1", html="<p>x</p>")

    await notifications.add([n])

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
            stored = await other.notifications.get(n.id)
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
    assert stored.status == Status.QUEUED
    assert stored.attempts == 0


async def test_the_file_is_in_wal_mode(tmp_path: Path, sqlite: Outbox) -> None:
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize(("setting", "level"), [("NORMAL", 1), ("FULL", 2)])
async def test_outbox_synchronous_decides_when_sqlite_syncs_to_disk(tmp_path: Path, setting: str, level: int) -> None:
    store = sqlite_outbox(tmp_path / "outbox.sqlite3", synchronous=setting)
    await store.open()
    assert isinstance(store.database, SqliteDatabase)
    try:
        # The pragma is per connection: ask the outbox's own, not a second one.
        assert await store.database.read(lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == level
    finally:
        await store.close()


async def test_claim_takes_due_notifications_once(notifications: NotificationStore) -> None:
    first, second = notification(), notification()
    await notifications.add([first, second])

    claimed = await notifications.claim(10, time.time())
    again = await notifications.claim(10, time.time())

    assert sorted(n.id for n in claimed) == sorted([first.id, second.id])
    assert all(n.status == Status.SENDING and n.attempts == 1 for n in claimed)
    assert again == []


async def test_claim_respects_the_limit_and_the_due_time(notifications: NotificationStore) -> None:
    await notifications.add([notification() for _ in range(3)])
    [later] = await notifications.claim(1, time.time())
    await notifications.mark_retry(later.id, error="451 busy", next_attempt_at=time.time() + 60, now=time.time())

    claimed = await notifications.claim(10, time.time())

    assert len(claimed) == 2
    assert later.id not in {n.id for n in claimed}
    assert await notifications.next_due_at() == pytest.approx(time.time() + 60, abs=5)


async def test_release_gives_back_the_attempt(notifications: NotificationStore) -> None:
    n = notification()
    await notifications.add([n])
    await notifications.claim(1, time.time())

    await notifications.release([n.id])

    stored = await notifications.get(n.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (Status.QUEUED, 0)


async def test_a_retry_can_narrow_the_envelope_and_replace_the_refusals(notifications: NotificationStore) -> None:
    n = notification(to=["ada@example.com", "grey@example.com"], cc=["gone@example.com"])
    await notifications.add([n])
    [claimed] = await notifications.claim(1, time.time())
    refused = [
        Refusal(address="grey@example.com", code=451, message="greylisted"),
        Refusal(address="gone@example.com", code=550, message="no such user"),
    ]

    await notifications.mark_retry(
        n.id,
        error="refused for now",
        next_attempt_at=time.time(),
        now=time.time(),
        attempt=claimed.attempts,
        envelope=["grey@example.com"],
        refused=refused,
    )
    [again] = await notifications.claim(1, time.time())
    await notifications.mark_retry(n.id, error="451 again", next_attempt_at=time.time(), now=time.time())

    assert again.envelope == ["grey@example.com"]
    assert again.refused_recipients == refused
    assert (again.to, again.cc) == (n.to, n.cc)
    stored = await notifications.get(n.id)
    assert stored is not None
    # A retry without an envelope or refusals leaves both as they were.
    assert (stored.envelope, stored.refused_recipients) == (["grey@example.com"], refused)


async def test_mark_sent_and_failed_record_the_outcome(notifications: NotificationStore) -> None:
    good, bad = notification(), notification()
    await notifications.add([good, bad])
    await notifications.claim(2, time.time())
    refused = [Refusal(address="x@example.com", code=550, message="no")]

    await notifications.mark_sent(good.id, smtp_reply="250 OK", refused=refused, now=time.time())
    await notifications.mark_failed(bad.id, error="550 rejected", refused=[], now=time.time())

    sent, failed = await notifications.get(good.id), await notifications.get(bad.id)
    assert sent is not None
    assert failed is not None
    assert (sent.status, sent.smtp_reply, sent.refused_recipients) == (Status.SENT, "250 OK", refused)
    assert sent.sent_at is not None
    assert (failed.status, failed.last_error) == (Status.FAILED, "550 rejected")


async def test_refusals_are_stored_as_the_json_the_api_shows(tmp_path: Path, sqlite: Outbox) -> None:
    # The column holds {address, code, message} objects, as rows written before the Refusal type did: those
    # read back as they were, and new ones are written the same way (no migration).
    n, old = notification(), notification()
    await sqlite.notifications.add([n, old])
    await sqlite.notifications.claim(2, time.time())
    await sqlite.notifications.mark_sent(
        n.id, smtp_reply="250 OK", refused=[Refusal("x@example.com", 550, "no")], now=time.time()
    )
    stored_before = '[{"address": "y@example.com", "code": 451, "message": "later"}]'
    with contextlib.closing(sqlite3.connect(tmp_path / "outbox.sqlite3")) as db, db:
        db.execute("UPDATE notifications SET refused = ? WHERE id = ?", (stored_before, old.id))
        [written] = db.execute("SELECT refused FROM notifications WHERE id = ?", (n.id,)).fetchone()

    assert json.loads(written) == [{"address": "x@example.com", "code": 550, "message": "no"}]
    read = await sqlite.notifications.get(old.id)
    assert read is not None
    assert read.refused_recipients == [Refusal("y@example.com", 451, "later")]


async def test_requeue_only_takes_failed_notifications(notifications: NotificationStore) -> None:
    failed, queued = notification(), notification()
    await notifications.add([failed, queued])
    await notifications.claim(1, time.time())
    await notifications.mark_failed(failed.id, error="550", refused=[], now=time.time())

    requeued = await notifications.requeue_failed(failed.id, time.time())

    assert requeued is not None
    assert (requeued.status, requeued.attempts) == (Status.QUEUED, 0)
    assert await notifications.requeue_failed(queued.id, time.time()) is None
    assert await notifications.requeue_failed("missing", time.time()) is None


async def test_recover_puts_abandoned_claims_back_in_the_queue(backend: Backend) -> None:
    crashed = backend.make()
    await crashed.open()
    long_ago = time.time() - 2 * LEASE_SECONDS
    n = notification(created_at=long_ago)
    await crashed.notifications.add([n])
    # Claimed long ago: the claim's lease has run out, as a dead replica's would.
    await crashed.notifications.claim(1, long_ago)
    await crashed.close()

    restarted = backend.make()
    await restarted.open()
    try:
        assert await restarted.notifications.recover() == 1
        stored = await restarted.notifications.get(n.id)
        assert stored is not None
        assert stored.status == Status.QUEUED
        assert [c.id for c in await restarted.notifications.claim(5, time.time())] == [n.id]
    finally:
        await restarted.close()


async def test_an_outcome_from_a_claim_that_was_taken_over_is_ignored(notifications: NotificationStore) -> None:
    n = notification()
    await notifications.add([n])
    [first] = await notifications.claim(1, time.time())
    await notifications.mark_retry(n.id, error="451 busy", next_attempt_at=time.time(), now=time.time(), attempt=1)
    [second] = await notifications.claim(1, time.time())

    # The first claim's late writes land nowhere: the row belongs to the second claim now.
    await notifications.mark_failed(n.id, error="late", refused=[], now=time.time(), attempt=first.attempts)
    await notifications.mark_sent(n.id, smtp_reply="250 late", refused=[], now=time.time(), attempt=first.attempts)
    still = await notifications.get(n.id)
    await notifications.mark_sent(n.id, smtp_reply="250 OK", refused=[], now=time.time(), attempt=second.attempts)
    done = await notifications.get(n.id)

    assert still is not None
    assert done is not None
    assert (still.status, still.attempts, still.smtp_reply) == (Status.SENDING, 2, None)
    assert (done.status, done.smtp_reply) == (Status.SENT, "250 OK")


async def test_outcomes_written_at_once_each_land_on_their_own_claim_and_one_at_fault_fails_alone(
    notifications: NotificationStore,
) -> None:
    # What a draining dispatcher's workers do: outcomes arrive together and are written together (the SQLite
    # group commit, PostgreSQL's OutcomeBatch), yet each is judged on its own row.
    rows = [notification() for _ in range(6)]
    await notifications.add(rows)
    claimed = {n.id: n for n in await notifications.claim(6, time.time())}
    sent, retried, failed, stale, broken, after = (claimed[n.id] for n in rows)
    now = time.time()

    results = await asyncio.gather(
        notifications.mark_sent(sent.id, smtp_reply="250 OK", refused=[], now=now, attempt=sent.attempts),
        notifications.mark_retry(retried.id, error="451 busy", next_attempt_at=now + 60, now=now, attempt=1),
        notifications.mark_failed(failed.id, error="550 no", refused=[], now=now, attempt=failed.attempts),
        # A claim taken over since (another attempt number): lands nowhere, and takes nothing down with it.
        notifications.mark_sent(stale.id, smtp_reply="250 late", refused=[], now=now, attempt=stale.attempts + 1),
        # Cannot be written at all (no integer column holds it): fails alone.
        notifications.mark_sent(broken.id, smtp_reply="250 OK", refused=[], now=now, attempt=2**70),
        notifications.mark_sent(after.id, smtp_reply="250 OK", refused=[], now=now, attempt=after.attempts),
        return_exceptions=True,
    )

    assert [type(result).__name__ for result in results].count("NoneType") == 5, results
    assert results[4] is not None
    status = {n.id: (await notifications.get(n.id)) for n in rows}
    assert {key: (value.status if value else None) for key, value in status.items()} == {
        sent.id: Status.SENT,
        retried.id: Status.QUEUED,
        failed.id: Status.FAILED,
        stale.id: Status.SENDING,
        broken.id: Status.SENDING,
        after.id: Status.SENT,
    }
    assert [[entry.outcome for entry in value.history] for value in status.values() if value] == [
        ["sent"],
        ["retry"],
        ["failed"],
        [],
        [],
        ["sent"],
    ]


async def test_pages_are_newest_first_and_filtered(notifications: NotificationStore) -> None:
    items = [notification() for _ in range(5)]
    for n in items:
        await notifications.add([n])

    first = await notifications.page(status=None, limit=2, cursor=None)
    second = await notifications.page(status=None, limit=2, cursor=first.next_cursor)
    last = await notifications.page(status=None, limit=2, cursor=second.next_cursor)
    nothing = await notifications.page(status=Status.SENT, limit=10, cursor=None)

    assert [n.id for n in first.items + second.items + last.items] == [n.id for n in reversed(items)]
    assert last.next_cursor is None
    assert nothing.items == []


async def test_many_concurrent_adds_are_all_committed(notifications: NotificationStore) -> None:
    batch = [notification() for _ in range(200)]
    await asyncio.gather(*(notifications.add([n]) for n in batch))

    page = await notifications.page(status=Status.QUEUED, limit=500, cursor=None)
    assert len(page.items) == 200


# -- PostgreSQL only: several replicas on one database -------------------------------------------------------


async def test_replicas_claiming_at_once_never_take_the_same_notification(
    replicas: tuple[Outbox, Outbox],
) -> None:
    first, second = (outbox.notifications for outbox in replicas)
    await first.add([notification() for _ in range(300)])

    async def drain(store: NotificationStore) -> list[str]:
        taken: list[str] = []
        while claimed := await store.claim(7, time.time()):
            taken += [n.id for n in claimed]
        return taken

    by_first, by_second = await asyncio.gather(drain(first), drain(second))

    assert len(by_first) + len(by_second) == 300
    assert set(by_first).isdisjoint(by_second)


async def test_a_live_claim_is_neither_recovered_nor_claimed_by_another_replica(
    replicas: tuple[Outbox, Outbox],
) -> None:
    first, second = (outbox.notifications for outbox in replicas)
    n = notification()
    await first.add([n])
    await first.claim(1, time.time())

    # The second replica starting up must not steal the first one's claim while its lease runs.
    assert await second.recover() == 0
    assert await second.claim(10, time.time()) == []
    # The claim's lease end is when the store next has something due.
    assert await second.next_due_at() == pytest.approx(time.time() + LEASE_SECONDS, abs=5)


async def test_another_replica_takes_over_a_claim_whose_lease_ran_out(
    replicas: tuple[Outbox, Outbox],
) -> None:
    dead, alive = (outbox.notifications for outbox in replicas)
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
    assert (stored.status, stored.smtp_reply, stored.attempts) == (Status.SENT, "250 OK", 2)


async def test_an_insert_by_one_replica_wakes_the_others(replicas: tuple[Outbox, Outbox]) -> None:
    first, second = (outbox.notifications for outbox in replicas)
    woken = asyncio.Event()
    # The listener wakes its subscribers once when it connects (it may have missed something): only a wake after
    # that one can come from the insert.
    listening = replicas[1].database.listening  # type: ignore[attr-defined]
    async with asyncio.timeout(10):
        await listening.wait()
    second.subscribe(woken.set)

    await first.add([notification()])

    async with asyncio.timeout(5):
        await woken.wait()
