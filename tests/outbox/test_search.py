"""The recipient search behind the activity page's filter, on both backends: it finds a recipient in to, cc or
bcc, pages by cursor, and never reads more than its window of rows per call, however large the table."""

from __future__ import annotations

import time

from service.domain import Status
from service.outbox import Notification, NotificationStore, Outbox
from tests.outbox.backends import notification


async def search_all(
    store: NotificationStore, recipient: str, *, status: Status | None = None, limit: int, scan: int
) -> list[list[str]]:
    """Every page of a search, followed by cursor to its end: each page's subjects."""
    pages, cursor = [], None
    while True:
        page = await store.page_for_recipient(recipient=recipient, status=status, limit=limit, cursor=cursor, scan=scan)
        pages.append([n.subject for n in page.items])
        if page.next_cursor is None:
            return pages
        assert len(pages) < 100, "the search never ends"
        cursor = page.next_cursor


async def test_a_recipient_is_found_in_to_cc_and_bcc_newest_first(notifications: NotificationStore) -> None:
    await notifications.add([notification(subject="to", to=["Ada Lovelace <ada@example.com>"])])
    await notifications.add([notification(subject="cc", to=["bob@example.com"], cc=["ADA@example.com"])])
    await notifications.add([notification(subject="other", to=["bob@example.com"])])
    await notifications.add([notification(subject="bcc", to=["bob@example.com"], bcc=["ada@example.com"])])

    assert await search_all(notifications, "ada@example", limit=10, scan=100) == [["bcc", "cc", "to"]]
    # The display name is part of what is searched, in any case.
    assert await search_all(notifications, "LOVELACE", limit=10, scan=100) == [["to"]]
    assert await search_all(notifications, "nobody@", limit=10, scan=100) == [[]]


async def test_the_search_keeps_to_one_status(notifications: NotificationStore) -> None:
    await notifications.add([notification(subject="a"), notification(subject="b")])
    [claimed] = await notifications.claim(1, time.time())
    await notifications.mark_failed(claimed.id, error="550 no", refused=[], now=time.time())

    assert await search_all(notifications, "ada@", status=Status.FAILED, limit=10, scan=100) == [[claimed.subject]]


async def test_a_rare_match_is_reached_a_window_at_a_time(notifications: NotificationStore) -> None:
    await notifications.add([notification(subject="old match", to=["rare@example.com"])])
    await notifications.add([notification(subject=f"n{i}") for i in range(25)])

    # Each call looks at 10 rows at most: two windows without a match (each still says where to go on), then
    # the one holding it, which is the last.
    assert await search_all(notifications, "rare@", limit=5, scan=10) == [[], [], ["old match"]]


async def test_more_matches_than_a_page_go_on_after_the_last_one_shown(notifications: NotificationStore) -> None:
    await notifications.add([notification(subject=f"m{i}", to=["ada@example.com"]) for i in range(7)])

    pages = await search_all(notifications, "ada@", limit=3, scan=100)

    assert pages == [["m6", "m5", "m4"], ["m3", "m2", "m1"], ["m0"]]


def a_thousand(prefix: str) -> list[Notification]:
    return [notification(subject=f"{prefix}{i}", to=[f"user{i}@example.com"]) for i in range(1000)]


async def test_a_search_reads_its_window_not_the_table(sqlite: Outbox) -> None:
    # The SQLite outbox has one thread: a search that read the whole table would hold up every accept behind it.
    # SQLite's virtual machine steps, counted in thousands, measure the work without timing anything.
    outbox, database = sqlite.notifications, sqlite.database

    async def steps(recipient: str, scan: int) -> int:
        counted = [0]

        def count() -> int:
            counted[0] += 1
            return 0

        await database.read(lambda db: db.set_progress_handler(count, 1000))
        await outbox.page_for_recipient(recipient=recipient, status=None, limit=50, cursor=None, scan=scan)
        await database.read(lambda db: db.set_progress_handler(None, 0))
        return counted[0]

    for _ in range(3):
        await outbox.add(a_thousand("n"))
    small = await steps("nobody@", scan=500)
    for _ in range(27):
        await outbox.add(a_thousand("n"))
    large = await steps("nobody@", scan=500)
    whole_table = await steps("nobody@", scan=1_000_000)

    # Ten times the rows, the same work for a window; the whole table is far more.
    assert large <= small * 1.5 + 5, (small, large)
    assert whole_table > large * 10, (large, whole_table)
