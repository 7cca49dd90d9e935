"""Idempotency-Keys and the queue limit in the outbox, on both backends: a key and its notifications are
stored in one transaction or not at all, and replicas sharing a database cannot both take one key."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.outbox import IdempotencyKeyTaken, IdempotencyRecord, Outbox, QueueFull
from service.outbox.postgres import PostgresOutbox
from tests.outbox.test_notifications import Backend, backend, notification, outbox, replicas

__all__ = ["backend", "outbox", "replicas"]  # fixtures


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
    await outbox.add([notification()], idempotency=record("k"))
    results = await asyncio.gather(
        outbox.add([notification()], idempotency=record("k")),
        outbox.add([notification()], idempotency=record("other")),
        return_exceptions=True,
    )
    assert isinstance(results[0], IdempotencyKeyTaken)
    assert results[1] is None
    assert await outbox.count_unsent() == 2
    stored = await outbox.get_idempotency("", "k", time.time())
    assert stored is not None
    assert (stored.body, stored.headers, stored.status_code) == (
        b'{"id": "x"}',
        {"Location": "/v1/notifications/x"},
        202,
    )
    assert await outbox.get_idempotency("", "k", time.time() + 120) is None
    # An expired key may be used again.
    await outbox.add([notification()], idempotency=record("gone", ttl=-1))
    await outbox.add([notification()], idempotency=record("gone"))
    assert await outbox.count_unsent() == 4


async def test_a_failed_commit_stores_neither_key_nor_notification(outbox: Outbox) -> None:
    existing, fresh = notification(), notification()
    await outbox.add([existing])
    # A second row with the same id breaks the transaction after the key's row was written in it.
    with pytest.raises(Exception, match=r"(?i)unique"):
        await outbox.add([fresh, existing], idempotency=record("k"))
    assert await outbox.get_idempotency("", "k", time.time()) is None
    assert await outbox.get(fresh.id) is None
    assert await outbox.count_unsent() == 1


async def test_expired_keys_are_swept(outbox: Outbox) -> None:
    await outbox.add([notification()], idempotency=record("old", ttl=-1))
    await outbox.add([notification()], idempotency=record("live"))
    assert await outbox.sweep_idempotency(time.time()) == 1
    assert await outbox.sweep_idempotency(time.time()) == 0
    assert await outbox.get_idempotency("", "live", time.time()) is not None


async def test_queue_full_adds_nothing_and_stores_no_key(backend: Backend) -> None:
    store = backend.make(queue_limit=3)
    await store.open()
    try:
        await store.add([notification(), notification()])
        with pytest.raises(QueueFull) as refused:
            await store.add([notification(), notification()], idempotency=record("k"))
        assert (refused.value.unsent, refused.value.limit, refused.value.adding) == (2, 3, 2)
        assert await store.get_idempotency("", "k", time.time()) is None
        assert await store.count_unsent() == 2
        # Sent mail leaves the queue and makes room.
        [claimed, _] = await store.claim(2, time.time())
        assert await store.count_unsent() == 2
        await store.mark_sent(claimed.id, smtp_reply="250 ok", refused=[], now=time.time())
        assert await store.count_unsent() == 1
        await store.add([notification(), notification()])
        assert await store.count_unsent() == 3
    finally:
        await store.close()


async def test_replicas_racing_for_one_key_store_it_once(replicas: tuple[PostgresOutbox, PostgresOutbox]) -> None:
    first, second = replicas
    for round_ in range(20):
        results = await asyncio.gather(
            first.add([notification()], idempotency=record(f"k{round_}")),
            second.add([notification()], idempotency=record(f"k{round_}")),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["IdempotencyKeyTaken", "NoneType"], results
    assert await first.count_unsent() == await second.count_unsent() == 20


async def test_the_queue_limit_counts_every_replicas_mail(postgres_url: str) -> None:
    first = PostgresOutbox(postgres_url, lease_seconds=300, pool_size=2, queue_limit=5)
    second = PostgresOutbox(postgres_url, lease_seconds=300, pool_size=2, queue_limit=5)
    await first.open()
    await second.open()
    try:
        await first.add([notification() for _ in range(4)])
        with pytest.raises(QueueFull):
            await second.add([notification(), notification()])
        await second.add([notification()])
        assert await first.count_unsent() == 5
    finally:
        await first.close()
        await second.close()
