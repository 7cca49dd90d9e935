"""The outbox's contract, against a real SQLite file."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.outbox import Notification, Outbox, OutboxUnavailable
from service.outbox.sqlite import SqliteOutbox, _migrations


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


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    store = SqliteOutbox(tmp_path / "outbox.sqlite3")
    await store.open()
    yield store
    await store.close()


async def test_added_notifications_are_on_disk_when_add_returns(tmp_path: Path, outbox: Outbox) -> None:
    n = notification(cc=["c@example.com"], metadata={"k": "v"}, request_id="r1", html="<p>x</p>")

    await outbox.add([n])

    # A second, independent connection sees the committed row: it is in the file, not in a buffer.
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as other:
        assert other.execute("SELECT status FROM notifications WHERE id = ?", (n.id,)).fetchone() == ("queued",)
    stored = await outbox.get(n.id)
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


async def test_the_file_is_in_wal_mode(tmp_path: Path, outbox: Outbox) -> None:
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


async def test_recover_puts_sending_back_in_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    crashed = SqliteOutbox(path)
    await crashed.open()
    n = notification()
    await crashed.add([n])
    await crashed.claim(1, time.time())
    await crashed.close()

    restarted = SqliteOutbox(path)
    await restarted.open()
    try:
        assert await restarted.recover() == 1
        stored = await restarted.get(n.id)
        assert stored is not None
        assert stored.status == "queued"
        assert [c.id for c in await restarted.claim(5, time.time())] == [n.id]
    finally:
        await restarted.close()


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
    import asyncio

    batch = [notification() for _ in range(200)]
    await asyncio.gather(*(outbox.add([n]) for n in batch))

    page = await outbox.page(status="queued", limit=500, cursor=None)
    assert len(page.items) == 200


async def test_a_locked_file_is_reported_unwritable(tmp_path: Path, outbox: Outbox) -> None:
    blocker = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OutboxUnavailable):
            await outbox.check_writable()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await outbox.check_writable()


async def test_migrations_run_once_and_record_the_version(tmp_path: Path) -> None:
    for _ in range(2):
        store = SqliteOutbox(tmp_path / "outbox.sqlite3")
        await store.open()
        # The number of the newest migration file, whichever branch added it.
        assert await store.schema_version() == max(number for number, _ in _migrations())
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
