"""A notification's attempt history, against both backends: each outcome appends its entry in the same write,
the newest HISTORY_LIMIT are kept, and `attempts` and `last_error` stay what they were."""

from __future__ import annotations

import time

from service.domain import HISTORY_LIMIT, HistoryEntry, Outcome, Status
from service.outbox import NotificationStore, Outbox
from tests.outbox.backends import LEASE_SECONDS, Backend, notification


async def test_each_outcome_appends_its_entry_and_last_error_stays_as_history(
    notifications: NotificationStore,
) -> None:
    n = notification()
    await notifications.add([n])
    [claimed] = await notifications.claim(1, time.time())
    await notifications.mark_retry(
        n.id, error="451 try later", next_attempt_at=0, now=100.0, attempt=claimed.attempts, smtp_code=451
    )
    [claimed] = await notifications.claim(1, time.time())
    await notifications.mark_sent(n.id, smtp_reply="250 2.0.0 OK", refused=[], now=200.0, attempt=claimed.attempts)

    stored = await notifications.get(n.id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.last_error) == (Status.SENT, 2, "451 try later")
    assert stored.history == [
        HistoryEntry(at=100.0, outcome=Outcome.RETRY, smtp_code=451, message="451 try later"),
        HistoryEntry(at=200.0, outcome=Outcome.SENT, smtp_code=250, message="250 2.0.0 OK"),
    ]


async def test_failed_interrupted_and_requeued_are_recorded(notifications: NotificationStore) -> None:
    n = notification()
    await notifications.add([n])
    [claimed] = await notifications.claim(1, time.time())
    await notifications.mark_retry(
        n.id,
        error="interrupted by shutdown",
        next_attempt_at=0,
        now=1.0,
        attempt=claimed.attempts,
        outcome=Outcome.INTERRUPTED,
    )
    [claimed] = await notifications.claim(1, time.time())
    await notifications.mark_failed(
        n.id, error="550 no such user", refused=[], now=2.0, attempt=claimed.attempts, smtp_code=550
    )
    await notifications.requeue_failed(n.id, 3.0)

    stored = await notifications.get(n.id)
    assert stored is not None
    assert [(h.outcome, h.smtp_code) for h in stored.history] == [
        (Outcome.INTERRUPTED, None),
        (Outcome.FAILED, 550),
        (Outcome.REQUEUED, None),
    ]
    assert stored.attempts == 0


async def test_the_history_keeps_the_newest_entries_only(notifications: NotificationStore) -> None:
    n = notification()
    await notifications.add([n])
    tries = HISTORY_LIMIT + 5
    for number in range(tries):
        [claimed] = await notifications.claim(1, time.time())
        await notifications.mark_retry(
            n.id, error=f"try {number + 1}", next_attempt_at=0, now=float(number), attempt=claimed.attempts
        )

    stored = await notifications.get(n.id)
    assert stored is not None
    assert stored.attempts == tries
    assert len(stored.history) == HISTORY_LIMIT
    assert [h.message for h in stored.history] == [f"try {number + 1}" for number in range(5, tries)]


async def test_an_outcome_from_a_claim_that_was_taken_over_leaves_no_entry(notifications: NotificationStore) -> None:
    n = notification()
    await notifications.add([n])
    [claimed] = await notifications.claim(1, time.time())
    await notifications.mark_sent(n.id, smtp_reply="250 OK", refused=[], now=1.0, attempt=claimed.attempts + 1)
    stored = await notifications.get(n.id)
    assert stored is not None
    assert (stored.status, stored.history) == (Status.SENDING, [])


async def test_recovered_claims_say_so(backend: Backend) -> None:
    first = backend.make()
    await first.open()
    n = notification()
    try:
        await first.notifications.add([n])
        await first.notifications.claim(1, time.time())
        if backend.name == "postgres":
            # A replica's claim is given back once its lease has run out.
            await first.notifications.hold([n.id], time.time() - 2 * LEASE_SECONDS)
        assert await first.notifications.recover() == 1
        stored = await first.notifications.get(n.id)
        assert stored is not None
        assert [h.outcome for h in stored.history] == [Outcome.RECOVERED]
    finally:
        await first.close()


async def test_a_held_claim_outlives_its_first_lease(replicas: tuple[Outbox, Outbox]) -> None:
    # Its outcome waits in memory (a full disk): nobody may claim and send it again meanwhile.
    holder, other = (outbox.notifications for outbox in replicas)
    n = notification()
    await holder.add([n])
    now = time.time()
    [claimed] = await holder.claim(1, now)
    await holder.hold([n.id], now + LEASE_SECONDS - 1)

    assert await other.claim(10, now + LEASE_SECONDS + 1) == []
    await holder.mark_sent(n.id, smtp_reply="250 OK", refused=[], now=time.time(), attempt=claimed.attempts)
    stored = await holder.get(n.id)
    assert stored is not None
    assert stored.status == Status.SENT
