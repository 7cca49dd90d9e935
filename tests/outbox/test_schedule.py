"""Scheduled send and cancel in the notification store's contract, on both backends: a `scheduled` row is due at
its send_at (claimed then, not before), survives a restart, takes no room under the queue limit until it is
claimed, and a cancel is one conditional UPDATE that a claim cannot also win. Times are passed in (`now`), never
waited for."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.domain import Outcome, Status
from service.outbox import Notification, NotificationStore, Outbox, QueueFull
from tests.outbox.backends import Backend, notification

HOUR = 3600.0


def scheduled(at: float, **overrides: object) -> Notification:
    return notification(status=Status.SCHEDULED, send_at=at, **overrides)


async def test_a_scheduled_notification_is_claimed_at_its_send_at_not_before(notifications: NotificationStore) -> None:
    now = time.time()
    later = scheduled(now + HOUR)
    await notifications.add([later])

    stored = await notifications.get(later.id)
    assert stored is not None
    assert (stored.status, stored.send_at, stored.next_attempt_at) == (Status.SCHEDULED, now + HOUR, now + HOUR)
    assert await notifications.claim(10, now) == []
    assert await notifications.claim(10, now + HOUR - 1) == []
    # The dispatcher sleeps until then (its slow poll aside).
    assert await notifications.next_due_at() == pytest.approx(now + HOUR)

    claimed = await notifications.claim(10, now + HOUR)
    assert [(n.id, n.status, n.attempts) for n in claimed] == [(later.id, Status.SENDING, 1)]


async def test_due_scheduled_and_queued_notifications_are_claimed_earliest_due_first(
    notifications: NotificationStore,
) -> None:
    now = time.time()
    queued = notification(created_at=now)
    early = scheduled(now + 10)
    late = scheduled(now + 20)
    await notifications.add([late, queued, early])

    assert await notifications.next_due_at() == pytest.approx(now)
    claimed = await notifications.claim(10, now + 30)
    assert [n.id for n in claimed] == [queued.id, early.id, late.id]


async def test_next_due_at_names_the_earlier_of_queued_and_scheduled(notifications: NotificationStore) -> None:
    now = time.time()
    await notifications.add([scheduled(now + 50)])
    assert await notifications.next_due_at() == pytest.approx(now + 50)
    await notifications.add([scheduled(now + 5)])
    assert await notifications.next_due_at() == pytest.approx(now + 5)
    await notifications.add([notification(created_at=now + 1)])
    assert await notifications.next_due_at() == pytest.approx(now + 1)


async def test_a_canceled_scheduled_notification_is_never_claimed(notifications: NotificationStore) -> None:
    now = time.time()
    later = scheduled(now + HOUR)
    await notifications.add([later])

    canceled = await notifications.cancel(later.id, now + 1)

    assert canceled is not None
    assert canceled.status == Status.CANCELED
    assert [(h.outcome, h.at) for h in canceled.history] == [(Outcome.CANCELED, now + 1)]
    assert await notifications.claim(10, now + 2 * HOUR) == []
    assert await notifications.next_due_at() is None
    stored = await notifications.get(later.id)
    assert stored is not None
    assert stored.status == Status.CANCELED
    assert stored.attempts == 0


async def test_a_queued_notification_can_be_canceled_too(notifications: NotificationStore) -> None:
    n = notification()
    await notifications.add([n])

    canceled = await notifications.cancel(n.id, time.time())

    assert canceled is not None
    assert canceled.status == Status.CANCELED
    assert await notifications.claim(10, time.time() + HOUR) == []


async def test_cancel_after_the_claim_loses(notifications: NotificationStore) -> None:
    now = time.time()
    n = scheduled(now + 10)
    await notifications.add([n])
    [claimed] = await notifications.claim(10, now + 10)

    assert await notifications.cancel(n.id, now + 11) is None
    stored = await notifications.get(n.id)
    assert stored is not None
    assert stored.status == Status.SENDING
    # And its outcome lands as for any claim.
    await notifications.mark_sent(n.id, smtp_reply="250 OK", refused=[], now=now + 12, attempt=claimed.attempts)
    stored = await notifications.get(n.id)
    assert stored is not None
    assert stored.status == Status.SENT


async def test_nothing_but_scheduled_or_queued_can_be_canceled(notifications: NotificationStore) -> None:
    now = time.time()
    sent, failed, twice = notification(created_at=now - 3), notification(created_at=now - 2), notification()
    await notifications.add([sent, failed, twice])
    claimed = {n.id: n for n in await notifications.claim(10, now)}
    assert set(claimed) >= {sent.id, failed.id}
    await notifications.mark_sent(sent.id, smtp_reply="250 OK", refused=[], now=now, attempt=1)
    await notifications.mark_failed(failed.id, error="550 no", refused=[], now=now, attempt=1)
    await notifications.release([twice.id])
    assert await notifications.cancel(twice.id, now) is not None

    assert await notifications.cancel(sent.id, now) is None
    assert await notifications.cancel(failed.id, now) is None
    assert await notifications.cancel(twice.id, now) is None  # already canceled
    assert await notifications.cancel("no-such-id", now) is None


async def test_a_claim_and_a_cancel_at_once_never_both_win(backend: Backend, outbox: Outbox) -> None:
    # On PostgreSQL the cancel and the claim come from two replicas (two pools), as they would in production.
    other = backend.make() if backend.name == "postgres" else outbox
    if other is not outbox:
        await other.open()
    try:
        now = time.time()
        rows = [scheduled(now + 1) for _ in range(40)]
        await outbox.notifications.add(rows)

        async def cancel_all() -> set[str]:
            results = await asyncio.gather(*(other.notifications.cancel(n.id, now + 2) for n in rows))
            return {n.id for n in results if n is not None}

        async def claim_all() -> set[str]:
            taken: set[str] = set()
            for _ in range(20):
                taken |= {n.id for n in await outbox.notifications.claim(3, now + 2)}
            return taken

        canceled, claimed = await asyncio.gather(cancel_all(), claim_all())

        assert not canceled & claimed
        assert canceled | claimed == {n.id for n in rows}
        for n in rows:
            stored = await outbox.notifications.get(n.id)
            assert stored is not None
            assert stored.status == (Status.CANCELED if n.id in canceled else Status.SENDING)
    finally:
        if other is not outbox:
            await other.close()


async def test_scheduled_mail_survives_a_restart(backend: Backend) -> None:
    now = time.time()
    later = scheduled(now + HOUR)
    first = backend.make()
    await first.open()
    await first.notifications.add([later])
    await first.close()

    reopened = backend.make()
    await reopened.open()
    try:
        # What a start does first: nothing scheduled is touched by the recovery of `sending` rows.
        assert await reopened.notifications.recover() == 0
        stored = await reopened.notifications.get(later.id)
        assert stored is not None
        assert (stored.status, stored.send_at) == (Status.SCHEDULED, now + HOUR)
        assert await reopened.notifications.next_due_at() == pytest.approx(now + HOUR)
        assert [n.id for n in await reopened.notifications.claim(10, now + HOUR)] == [later.id]
    finally:
        await reopened.close()


async def test_scheduled_mail_is_not_counted_against_the_queue_limit_until_it_is_due(backend: Backend) -> None:
    opened = backend.make(queue_limit=2)
    await opened.open()
    try:
        store = opened.notifications
        now = time.time()
        await store.add([scheduled(now + 60) for _ in range(5)])
        assert await store.count_unsent() == 0
        await store.add([notification(), notification()])
        assert await store.count_unsent() == 2
        # Full for mail to send now, still open for mail for later.
        with pytest.raises(QueueFull):
            await store.add([notification()])
        with pytest.raises(QueueFull):
            await store.add([notification(), scheduled(now + 60)])
        await store.add([scheduled(now + 60)])

        # Once due and claimed (`sending`), it counts like any other.
        claimed = await store.claim(10, now + 60)
        assert len(claimed) == 8
        assert await store.count_unsent() == 8
    finally:
        await opened.close()


async def test_the_counts_keep_scheduled_and_canceled(outbox: Outbox) -> None:
    store = outbox.notifications
    now = time.time()
    first, second, third = scheduled(now + 60), scheduled(now + 60), notification()
    await store.add([first, second, third])
    await store.cancel(second.id, now)
    await store.cancel(third.id, now)

    gauges = await outbox.stats.queue_gauges()
    assert {status: gauges.counts[status] for status in (Status.SCHEDULED, Status.CANCELED, Status.QUEUED)} == {
        Status.SCHEDULED: 1,
        Status.CANCELED: 2,
        Status.QUEUED: 0,
    }
    await store.claim(10, now + 60)
    gauges = await outbox.stats.queue_gauges()
    assert (gauges.counts[Status.SCHEDULED], gauges.counts[Status.SENDING]) == (0, 1)


async def test_listing_by_status_finds_scheduled_and_canceled(notifications: NotificationStore) -> None:
    now = time.time()
    waiting, stopped = scheduled(now + 60), scheduled(now + 60)
    await notifications.add([waiting, stopped, notification()])
    await notifications.cancel(stopped.id, now)

    assert [n.id for n in (await notifications.page(status=Status.SCHEDULED, limit=10, cursor=None)).items] == [
        waiting.id
    ]
    assert [n.id for n in (await notifications.page(status=Status.CANCELED, limit=10, cursor=None)).items] == [
        stopped.id
    ]
