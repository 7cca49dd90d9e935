"""The suppression store's contract, on both backends: a hard bounce goes on the list in the outcome's
transaction (and only when the outcome lands), addresses compare as RFC 5321 says, and the version moves with
every change so that each process' in-memory copy knows when to reload."""

from __future__ import annotations

import time

from service.domain import Bounce, Outcome, Refusal
from service.outbox import Outbox
from tests.outbox.backends import notification

REPLY = "550 5.1.1 <gone@example.com>: Recipient address rejected"


async def _claimed(outbox: Outbox, to: list[str]) -> tuple[str, int]:
    await outbox.notifications.add([notification(to=to)])
    [claimed] = await outbox.notifications.claim(1, time.time())
    return claimed.id, claimed.attempts


async def test_a_hard_bounce_is_written_with_the_outcome_and_suppresses(outbox: Outbox) -> None:
    store = outbox.suppressions
    version = await store.version()
    notification_id, attempt = await _claimed(outbox, ["gone@example.com"])
    refusal = Refusal("gone@example.com", 550, "5.1.1 <gone@example.com>: Recipient address rejected")
    await outbox.notifications.mark_failed(
        notification_id,
        error="all recipients refused",
        refused=[refusal],
        now=time.time(),
        attempt=attempt,
        bounces=[Bounce("gone@example.com", REPLY)],
    )
    entry = await store.get("gone@example.com")
    assert entry is not None
    assert (entry.source, entry.reason, entry.suppressing) == ("hard_bounce", "hard bounce", True)
    assert (entry.smtp_reply, entry.notification_id) == (REPLY, notification_id)
    assert await store.version() > version
    assert (await store.suppressing_keys())[1] == frozenset({"gone@example.com"})


async def test_a_bounce_whose_outcome_did_not_land_is_not_written(outbox: Outbox) -> None:
    notification_id, attempt = await _claimed(outbox, ["gone@example.com"])
    # A claimer whose claim was taken over (another attempt number): neither its outcome nor its bounce lands.
    await outbox.notifications.mark_failed(
        notification_id,
        error="x",
        refused=[],
        now=time.time(),
        attempt=attempt + 1,
        bounces=[Bounce("gone@example.com", REPLY)],
    )
    assert await outbox.suppressions.get("gone@example.com") is None


async def test_a_bounce_only_recorded_does_not_suppress_until_suppressed_by_hand(outbox: Outbox) -> None:
    store = outbox.suppressions
    notification_id, attempt = await _claimed(outbox, ["ada@example.com", "gone@example.com"])
    await outbox.notifications.mark_sent(
        notification_id,
        smtp_reply="250 ok",
        refused=[Refusal("gone@example.com", 550, "5.1.1 no such user")],
        now=time.time(),
        attempt=attempt,
        bounces=[Bounce("gone@example.com", REPLY, suppress=False)],
    )
    entry = await store.get("gone@example.com")
    assert entry is not None
    assert not entry.suppressing
    assert (await store.suppressing_keys())[1] == frozenset()
    manual = await store.suppress("gone@example.com", reason="asked to stop", now=time.time())
    assert (manual.source, manual.reason, manual.suppressing) == ("manual", "asked to stop", True)
    # The bounce's reply and notification stay on record beside the manual reason.
    assert (manual.smtp_reply, manual.notification_id) == (REPLY, notification_id)


async def test_the_domain_compares_case_insensitively_and_the_local_part_exactly(outbox: Outbox) -> None:
    store = outbox.suppressions
    await store.suppress("Ada@Example.COM", reason="r", now=time.time())
    assert await store.get("Ada@example.com") is not None
    assert await store.get("ada@example.com") is None
    assert (await store.suppressing_keys())[1] == frozenset({"Ada@example.com"})
    assert not await store.lift("ada@EXAMPLE.com")
    assert await store.lift("Ada@EXAMPLE.com")
    assert await store.get("Ada@example.com") is None


async def test_pages_newest_first_and_every_change_moves_the_version(outbox: Outbox) -> None:
    store = outbox.suppressions
    versions = [await store.version()]
    for number in range(5):
        await store.suppress(f"user{number}@example.com", reason="r", now=time.time())
        versions.append(await store.version())
    await store.lift("user0@example.com")
    versions.append(await store.version())
    assert versions == sorted(set(versions))
    # A lift of what is not there changes nothing.
    assert not await store.lift("nobody@example.com")
    assert await store.version() == versions[-1]
    first = await store.page(limit=3, cursor=None)
    assert [s.address for s in first.items] == ["user4@example.com", "user3@example.com", "user2@example.com"]
    assert first.next_cursor is not None
    second = await store.page(limit=3, cursor=first.next_cursor)
    assert [s.address for s in second.items] == ["user1@example.com"]
    assert second.next_cursor is None


async def test_a_notification_stored_with_refused_recipients_keeps_them(outbox: Outbox) -> None:
    stored = notification(
        to=["ada@example.com", "gone@example.com"],
        envelope=["ada@example.com"],
        refused_recipients=[Refusal("gone@example.com", 550, "suppressed")],
    )
    await outbox.notifications.add([stored])
    read = await outbox.notifications.get(stored.id)
    assert read is not None
    assert (read.envelope, read.refused_recipients) == (["ada@example.com"], stored.refused_recipients)


async def test_every_outcome_write_appends_its_history_entry_and_records_its_bounce(outbox: Outbox) -> None:
    # The merge of the attempt history and the suppression list: one write carries both, for each outcome.
    bounce = [Bounce("gone@example.com", REPLY)]
    refusal = Refusal("gone@example.com", 550, "5.1.1 <gone@example.com>: Recipient address rejected")
    now = time.time()
    writes = {
        Outcome.SENT: lambda id_, attempt: outbox.notifications.mark_sent(
            id_, smtp_reply="250 OK", refused=[refusal], now=now, attempt=attempt, bounces=bounce
        ),
        Outcome.FAILED: lambda id_, attempt: outbox.notifications.mark_failed(
            id_, error="refused", refused=[refusal], now=now, attempt=attempt, smtp_code=550, bounces=bounce
        ),
        # Last: the requeued row is due again, and the next claim would take it.
        Outcome.RETRY: lambda id_, attempt: outbox.notifications.mark_retry(
            id_, error="451 later", next_attempt_at=now, now=now, attempt=attempt, smtp_code=451, bounces=bounce
        ),
    }
    for outcome, write in writes.items():
        notification_id, attempt = await _claimed(outbox, ["ada@example.com", "gone@example.com"])
        await write(notification_id, attempt)
        stored = await outbox.notifications.get(notification_id)
        assert stored is not None
        assert [entry.outcome for entry in stored.history] == [outcome]
        entry = await outbox.suppressions.get("gone@example.com")
        assert entry is not None
        assert entry.notification_id == notification_id, outcome
