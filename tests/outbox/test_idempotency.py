"""The idempotency store's contract and the queue limit, on both backends: a key and its notifications are
stored in one transaction (the notification store's add) or not at all, and replicas sharing a database cannot
both take one key."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.outbox import IdempotencyKeyTaken, IdempotencyRecord, Outbox, QueueFull
from service.outbox.postgres import postgres_outbox
from tests.outbox.backends import Backend, notification


def record(key: str, ttl: float = 60) -> IdempotencyRecord:
    now = time.time()
    return IdempotencyRecord(
        scope="",
        key=key,
        fingerprint="f",
        status_code=202,
        body=b'{"id": "x"}',
        headers={"Location": "/v1/notifications/x"},
        created_at=now,
        expires_at=now + ttl,
    )


async def test_a_taken_key_adds_no_notification_and_others_at_the_same_time_go_in(outbox: Outbox) -> None:
    notifications, idempotency = outbox.notifications, outbox.idempotency
    await notifications.add([notification()], idempotency=record("k"))
    results = await asyncio.gather(
        notifications.add([notification()], idempotency=record("k")),
        notifications.add([notification()], idempotency=record("other")),
        return_exceptions=True,
    )
    assert isinstance(results[0], IdempotencyKeyTaken)
    assert results[1] is None
    assert await notifications.count_unsent() == 2
    stored = await idempotency.get("", "k", time.time())
    assert stored is not None
    assert (stored.body, stored.headers, stored.status_code) == (
        b'{"id": "x"}',
        {"Location": "/v1/notifications/x"},
        202,
    )
    assert await idempotency.get("", "k", time.time() + 120) is None
    # An expired key may be used again.
    await notifications.add([notification()], idempotency=record("gone", ttl=-1))
    await notifications.add([notification()], idempotency=record("gone"))
    assert await notifications.count_unsent() == 4


async def test_a_failed_commit_stores_neither_key_nor_notification(outbox: Outbox) -> None:
    existing, fresh = notification(), notification()
    await outbox.notifications.add([existing])
    # A second row with the same id breaks the transaction after the key's row was written in it.
    with pytest.raises(Exception, match=r"(?i)unique"):
        await outbox.notifications.add([fresh, existing], idempotency=record("k"))
    assert await outbox.idempotency.get("", "k", time.time()) is None
    assert await outbox.notifications.get(fresh.id) is None
    assert await outbox.notifications.count_unsent() == 1


async def test_expired_keys_are_swept(outbox: Outbox) -> None:
    await outbox.notifications.add([notification()], idempotency=record("old", ttl=-1))
    await outbox.notifications.add([notification()], idempotency=record("live"))
    assert await outbox.idempotency.sweep(time.time()) == 1
    assert await outbox.idempotency.sweep(time.time()) == 0
    assert await outbox.idempotency.get("", "live", time.time()) is not None


async def test_queue_full_adds_nothing_and_stores_no_key(backend: Backend) -> None:
    opened = backend.make(queue_limit=3)
    await opened.open()
    store = opened.notifications
    try:
        await store.add([notification(), notification()])
        with pytest.raises(QueueFull) as refused:
            await store.add([notification(), notification()], idempotency=record("k"))
        assert (refused.value.unsent, refused.value.limit, refused.value.adding) == (2, 3, 2)
        assert await opened.idempotency.get("", "k", time.time()) is None
        assert await store.count_unsent() == 2
        # Sent mail leaves the queue and makes room.
        [claimed, _] = await store.claim(2, time.time())
        assert await store.count_unsent() == 2
        await store.mark_sent(claimed.id, smtp_reply="250 ok", refused=[], now=time.time())
        assert await store.count_unsent() == 1
        await store.add([notification(), notification()])
        assert await store.count_unsent() == 3
    finally:
        await opened.close()


async def test_replicas_racing_for_one_key_store_it_once(replicas: tuple[Outbox, Outbox]) -> None:
    first, second = (outbox.notifications for outbox in replicas)
    for round_ in range(20):
        results = await asyncio.gather(
            first.add([notification()], idempotency=record(f"k{round_}")),
            second.add([notification()], idempotency=record(f"k{round_}")),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["IdempotencyKeyTaken", "NoneType"], results
    assert await first.count_unsent() == await second.count_unsent() == 20


async def test_the_queue_limit_counts_every_replicas_mail(postgres_url: str) -> None:
    first = postgres_outbox(postgres_url, lease_seconds=300, pool_size=2, queue_limit=5)
    second = postgres_outbox(postgres_url, lease_seconds=300, pool_size=2, queue_limit=5)
    await first.open()
    await second.open()
    try:
        await first.notifications.add([notification() for _ in range(4)])
        with pytest.raises(QueueFull):
            await second.notifications.add([notification(), notification()])
        await second.notifications.add([notification()])
        assert await first.notifications.count_unsent() == 5
    finally:
        await first.close()
        await second.close()
