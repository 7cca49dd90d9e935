"""reschedule() in the notification store's contract, on both backends: only a `scheduled` notification moves,
in one conditional UPDATE that a claim cannot also win; it stays `scheduled`, due at its new time. Times are
passed in (`now`), never waited for."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.domain import Status
from service.outbox import NotificationStore, Outbox
from tests.outbox.backends import Backend, notification

HOUR = 3600.0


async def test_a_scheduled_notification_moves_to_its_new_time(notifications: NotificationStore) -> None:
    now = time.time()
    later = notification(status=Status.SCHEDULED, send_at=now + HOUR)
    await notifications.add([later])

    moved = await notifications.reschedule(later.id, now + 2 * HOUR, now + 1)

    assert moved is not None
    assert (moved.status, moved.send_at, moved.next_attempt_at) == (Status.SCHEDULED, now + 2 * HOUR, now + 2 * HOUR)
    assert moved.updated_at == pytest.approx(now + 1)
    assert await notifications.claim(10, now + HOUR) == []
    assert await notifications.next_due_at() == pytest.approx(now + 2 * HOUR)
    [claimed] = await notifications.claim(10, now + 2 * HOUR)
    assert claimed.id == later.id


async def test_an_earlier_time_makes_it_due_earlier(notifications: NotificationStore) -> None:
    now = time.time()
    later = notification(status=Status.SCHEDULED, send_at=now + HOUR)
    await notifications.add([later])

    assert await notifications.reschedule(later.id, now + 60, now) is not None

    assert await notifications.next_due_at() == pytest.approx(now + 60)
    assert [n.id for n in await notifications.claim(10, now + 60)] == [later.id]


async def test_nothing_but_a_scheduled_notification_can_be_rescheduled(notifications: NotificationStore) -> None:
    now = time.time()
    queued, canceled, claimed = (
        notification(created_at=now - 2),
        notification(status=Status.SCHEDULED, send_at=now + HOUR),
        notification(status=Status.SCHEDULED, send_at=now + 10),
    )
    await notifications.add([queued, canceled, claimed])
    assert await notifications.cancel(canceled.id, now) is not None
    taken = await notifications.claim(10, now + 10)
    assert {n.id for n in taken} == {queued.id, claimed.id}

    for n in (queued, canceled, claimed):
        assert await notifications.reschedule(n.id, now + HOUR, now) is None
    assert await notifications.reschedule("no-such-id", now + HOUR, now) is None
    stored = await notifications.get(canceled.id)
    assert stored is not None
    assert (stored.status, stored.send_at) == (Status.CANCELED, now + HOUR)


async def test_a_claim_and_a_reschedule_at_once_never_both_win(backend: Backend, outbox: Outbox) -> None:
    # On PostgreSQL they come from two replicas (two pools), as they would in production.
    other = backend.make() if backend.name == "postgres" else outbox
    if other is not outbox:
        await other.open()
    try:
        now = time.time()
        rows = [notification(status=Status.SCHEDULED, send_at=now + 1) for _ in range(40)]
        await outbox.notifications.add(rows)

        async def reschedule_all() -> set[str]:
            results = await asyncio.gather(*(other.notifications.reschedule(n.id, now + HOUR, now) for n in rows))
            return {n.id for n in results if n is not None}

        moved, claimed = await asyncio.gather(reschedule_all(), outbox.notifications.claim(40, now + 2))
        claimed_ids = {n.id for n in claimed}

        assert not moved & claimed_ids
        assert moved | claimed_ids == {n.id for n in rows}
        for n in rows:
            stored = await outbox.notifications.get(n.id)
            assert stored is not None
            expected = Status.SENDING if n.id in claimed_ids else Status.SCHEDULED
            assert stored.status == expected
            if n.id in moved:
                assert stored.next_attempt_at == pytest.approx(now + HOUR)
    finally:
        if other is not outbox:
            await other.close()
