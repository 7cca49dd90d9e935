"""The webhook store's contract, on both backends: an event is written with the outcome that causes it (and only
when that outcome lands), delayed once per notification, one delivery per URL; deliveries are claimed under a
lease, their outcomes land only for the claim that made them, and two replicas never claim the same one."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from service.domain import Outcome, Refusal
from service.outbox import Outbox
from service.outbox.jobs import DONE, Job
from service.outbox.postgres import postgres_outbox
from service.outbox.webhooks import DELIVERED, GIVEN_UP, PENDING, SENDING
from tests.outbox.backends import LEASE_SECONDS, Backend, notification

URLS = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]


@pytest.fixture
async def hooked(backend: Backend) -> AsyncIterator[Outbox]:
    """An outbox whose outcomes write webhook events for two URLs."""
    opened = backend.make(webhook_urls=URLS)
    await opened.open()
    yield opened
    await opened.close()


async def _claimed(outbox: Outbox, **overrides: object) -> tuple[str, int]:
    await outbox.notifications.add([notification(**overrides)])
    [claimed] = await outbox.notifications.claim(1, time.time())
    return claimed.id, claimed.attempts


async def test_an_outcome_writes_its_event_for_every_url_in_its_transaction(hooked: Outbox) -> None:
    notification_id, attempt = await _claimed(hooked)
    await hooked.notifications.mark_sent(
        notification_id, smtp_reply="250 2.0.0 OK", refused=[], now=time.time(), attempt=attempt
    )

    page = await hooked.webhooks.page(status=PENDING, limit=10, cursor=None)
    assert sorted(d.url for d in page.items) == URLS
    assert len({d.event_id for d in page.items}) == 1
    body = json.loads(page.items[0].body)
    assert body["type"] == "notification.sent"
    assert body["data"]["id"] == notification_id
    assert body["data"]["status"] == "sent"
    assert body["data"]["smtp_reply"] == "250 2.0.0 OK"
    assert body["data"]["history"][-1]["outcome"] == "sent"


async def test_an_outcome_that_does_not_land_writes_no_event(hooked: Outbox) -> None:
    notification_id, attempt = await _claimed(hooked)
    # A claimer whose claim was taken over: neither its outcome nor its event lands.
    await hooked.notifications.mark_failed(notification_id, error="x", refused=[], now=time.time(), attempt=attempt + 1)
    assert (await hooked.webhooks.page(status=None, limit=10, cursor=None)).items == []


async def test_without_urls_no_event_is_written(outbox: Outbox) -> None:
    notification_id, attempt = await _claimed(outbox)
    await outbox.notifications.mark_sent(
        notification_id, smtp_reply="250 OK", refused=[], now=time.time(), attempt=attempt
    )
    assert (await outbox.webhooks.page(status=None, limit=10, cursor=None)).items == []


async def test_delayed_is_written_once_per_notification_and_failed_carries_the_refusals(hooked: Outbox) -> None:
    notification_id, _ = await _claimed(hooked, to=["gone@example.com"])
    for attempt in (1, 2, 3):
        await hooked.notifications.mark_retry(
            notification_id, error="451 greylisted", next_attempt_at=0, now=time.time(), attempt=attempt, smtp_code=451
        )
        [claimed] = await hooked.notifications.claim(1, time.time())
    # A send cut short by shutdown is no delay of the mail: no event.
    await hooked.notifications.mark_retry(
        notification_id, error="interrupted", next_attempt_at=0, now=time.time(), attempt=4, outcome=Outcome.INTERRUPTED
    )
    [claimed] = await hooked.notifications.claim(1, time.time())
    refusal = Refusal("gone@example.com", 550, "5.1.1 no such user")
    await hooked.notifications.mark_failed(
        notification_id, error="550 5.1.1 no such user", refused=[refusal], now=time.time(), attempt=claimed.attempts
    )

    bodies = [json.loads(d.body) for d in (await hooked.webhooks.page(status=None, limit=50, cursor=None)).items]
    types = sorted({(b["type"], len([x for x in bodies if x["type"] == b["type"]])) for b in bodies})
    assert types == [("notification.delayed", 2), ("notification.failed", 2)]  # two URLs each
    failed = next(b for b in bodies if b["type"] == "notification.failed")
    assert failed["data"]["refused_recipients"] == [refusal.to_json()]
    delayed = next(b for b in bodies if b["type"] == "notification.delayed")
    assert delayed["data"]["attempts"] == 1


async def test_a_finished_job_writes_job_finished(hooked: Outbox) -> None:
    job = Job(id="job-1", template="welcome", csv_path="/tmp/x.csv", created_at=time.time())
    await hooked.jobs.create(job)
    await hooked.jobs.add_chunk(job.id, [notification()], [], rows_done=2)
    await hooked.jobs.finish(job.id, status=DONE, reason=None, now=time.time())
    [first, _] = (await hooked.webhooks.page(status=None, limit=10, cursor=None)).items
    body = json.loads(first.body)
    assert body["type"] == "job.finished"
    assert (body["data"]["id"], body["data"]["status"], body["data"]["accepted"]) == ("job-1", "done", 1)
    assert body["data"]["queued"] == 1


async def test_claims_lease_outcomes_and_retry(hooked: Outbox) -> None:
    store = hooked.webhooks
    notification_id, attempt = await _claimed(hooked)
    await hooked.notifications.mark_sent(
        notification_id, smtp_reply="250 OK", refused=[], now=time.time(), attempt=attempt
    )
    now = time.time()
    first = await store.claim(10, now, lease_seconds=30)
    assert [d.attempts for d in first] == [1, 1]
    assert {d.status for d in first} == {SENDING}
    assert await store.claim(10, now, lease_seconds=30) == []
    # A sender that died: its lease runs out and the delivery is claimed again, one attempt more.
    again = await store.claim(10, now + 31, lease_seconds=30)
    assert sorted(d.id for d in again) == sorted(d.id for d in first)
    assert {d.attempts for d in again} == {2}
    # The old claim's outcome does not land; the new one's does.
    assert not await store.mark_delivered(first[0].id, attempt=1, response_code=200, now=now)
    assert await store.mark_delivered(again[0].id, attempt=2, response_code=204, now=now)
    assert await store.mark_retry(
        again[1].id, attempt=2, error="HTTP 500", response_code=500, next_attempt_at=now + 60, now=now
    )
    assert await store.next_due_at() == pytest.approx(now + 60)
    assert await store.oldest_waiting_at() is not None
    [retried] = await store.claim(10, now + 61, lease_seconds=30)
    assert await store.mark_failed(retried.id, attempt=3, error="HTTP 500", response_code=500, now=now)

    failed = (await store.page(status=GIVEN_UP, limit=10, cursor=None)).items
    assert [(d.id, d.attempts, d.last_error, d.response_code) for d in failed] == [(retried.id, 3, "HTTP 500", 500)]
    assert await store.oldest_waiting_at() is None
    # Retry: a failed (or delivered) one goes back to pending, its attempts reset; a pending one does not.
    requeued = await store.retry(retried.id, now)
    assert requeued is not None
    assert (requeued.status, requeued.attempts) == (PENDING, 0)
    assert await store.retry(retried.id, now) is None
    delivered = await store.get(again[0].id)
    assert delivered is not None
    assert delivered.status == DELIVERED
    assert await store.get("dlv_nope") is None


async def test_pages_go_newest_first_with_a_cursor(hooked: Outbox) -> None:
    for _ in range(3):
        notification_id, attempt = await _claimed(hooked)
        await hooked.notifications.mark_sent(
            notification_id, smtp_reply="250 OK", refused=[], now=time.time(), attempt=attempt
        )
    first = await hooked.webhooks.page(status=None, limit=4, cursor=None)
    second = await hooked.webhooks.page(status=None, limit=4, cursor=first.next_cursor)
    assert len(first.items) == 4
    assert len(second.items) == 2
    assert second.next_cursor is None
    seqs = [d.seq for d in first.items + second.items]
    assert seqs == sorted(seqs, reverse=True)


async def test_recover_gives_back_what_a_stopped_sender_held(hooked: Outbox, backend: Backend) -> None:
    notification_id, attempt = await _claimed(hooked)
    await hooked.notifications.mark_sent(
        notification_id, smtp_reply="250 OK", refused=[], now=time.time(), attempt=attempt
    )
    claimed = await hooked.webhooks.claim(10, time.time(), lease_seconds=30)
    assert len(claimed) == 2
    # SQLite has one sending process: everything it left is given back at start. PostgreSQL: expired leases only.
    later = time.time() + (0 if backend.name == "sqlite" else 31)
    assert await hooked.webhooks.recover(later) == 2
    assert len((await hooked.webhooks.page(status=PENDING, limit=10, cursor=None)).items) == 2


async def test_two_replicas_never_claim_the_same_delivery(postgres_url: str) -> None:
    replicas = [
        postgres_outbox(postgres_url, lease_seconds=LEASE_SECONDS, pool_size=4, webhook_urls=URLS) for _ in range(2)
    ]
    for replica in replicas:
        await replica.open()
    try:
        writer = replicas[0]
        for _ in range(50):
            notification_id, attempt = await _claimed(writer)
            await writer.notifications.mark_sent(
                notification_id, smtp_reply="250 OK", refused=[], now=time.time(), attempt=attempt
            )

        async def drain(outbox: Outbox) -> list[str]:
            taken: list[str] = []
            while batch := await outbox.webhooks.claim(3, time.time(), lease_seconds=60):
                taken += [d.id for d in batch]
                await asyncio.sleep(0)
            return taken

        first, second = await asyncio.gather(drain(replicas[0]), drain(replicas[1]))
        assert len(first) + len(second) == 100
        assert len(set(first) | set(second)) == 100
    finally:
        for replica in replicas:
            await replica.close()


async def test_a_cancel_writes_canceled_in_its_transaction_and_a_refused_one_writes_nothing(hooked: Outbox) -> None:
    await hooked.notifications.add([notification(id="to-cancel")])
    canceled = await hooked.notifications.cancel("to-cancel", time.time())
    assert canceled is not None
    assert await hooked.notifications.cancel("to-cancel", time.time()) is None

    page = await hooked.webhooks.page(status=PENDING, limit=10, cursor=None)
    assert sorted(d.url for d in page.items) == URLS
    body = json.loads(page.items[0].body)
    assert (body["type"], body["data"]["id"], body["data"]["status"]) == (
        "notification.canceled",
        "to-cancel",
        "canceled",
    )
