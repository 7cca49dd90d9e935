"""Tags and headers in the store, on both backends: stored with the notification, read back as given, and the
`?tag=` page down the notification_tags index (migration 0008), with the status filter and cursors."""

from __future__ import annotations

import time
from pathlib import Path

from service.domain import Status
from service.outbox import NotificationStore, Outbox
from service.outbox.jobs import RowError
from tests.outbox.backends import another_job_store, notification
from tests.outbox.test_jobs import new_job


async def tagged_pages(
    store: NotificationStore, tag: str, *, status: Status | None = None, limit: int = 10
) -> list[list[str]]:
    """Every page of `?tag=`, followed by cursor to its end: each page's subjects."""
    pages, cursor = [], None
    while True:
        page = await store.page(status=status, limit=limit, cursor=cursor, tag=tag)
        pages.append([n.subject for n in page.items])
        if page.next_cursor is None:
            return pages
        assert len(pages) < 100, "the pages never end"
        cursor = page.next_cursor


async def test_headers_and_tags_are_read_back_as_stored(notifications: NotificationStore) -> None:
    headers = {"List-Unsubscribe": "<https://example.com/u/1>", "X-Campaign": "spring"}
    stored = notification(headers=headers, tags=["welcome", "billing"])
    await notifications.add([stored, notification(subject="plain")])

    got = await notifications.get(stored.id)
    assert got is not None
    assert (got.headers, got.tags) == (headers, ["welcome", "billing"])
    [claimed, plain] = await notifications.claim(2, time.time())
    assert (claimed.headers, claimed.tags) == (headers, ["welcome", "billing"])
    assert (plain.headers, plain.tags) == ({}, [])


async def test_a_tag_pages_newest_first_across_batches(notifications: NotificationStore) -> None:
    await notifications.add([notification(subject=f"w{i}", tags=["welcome"]) for i in range(3)])
    await notifications.add([notification(subject="b", tags=["billing"]), notification(subject="none")])
    await notifications.add([notification(subject="both", tags=["billing", "welcome"])])
    await notifications.add([notification(subject=f"w{i}", tags=["welcome"]) for i in range(3, 5)])

    assert await tagged_pages(notifications, "welcome", limit=2) == [["w4", "w3"], ["both", "w2"], ["w1", "w0"]]
    assert await tagged_pages(notifications, "billing") == [["both", "b"]]
    assert await tagged_pages(notifications, "nothing") == [[]]
    # Without a tag, the page is what it always was.
    page = await notifications.page(status=None, limit=10, cursor=None)
    assert [n.subject for n in page.items] == ["w4", "w3", "both", "none", "b", "w2", "w1", "w0"]


async def test_a_tag_combines_with_the_status_filter(notifications: NotificationStore) -> None:
    await notifications.add([notification(subject="a", tags=["welcome"])])
    await notifications.add([notification(subject="b", tags=["welcome"]), notification(subject="c")])
    [first] = await notifications.claim(1, time.time())
    await notifications.mark_failed(first.id, error="550 no", refused=[], now=time.time())

    assert await tagged_pages(notifications, "welcome", status=Status.FAILED) == [["a"]]
    assert await tagged_pages(notifications, "welcome", status=Status.QUEUED) == [["b"]]


async def test_a_job_keeps_its_tags_and_its_chunks_file_them(tmp_path: Path, outbox: Outbox) -> None:
    job = new_job(tmp_path)
    job.tags = ["spring", "newsletter"]
    await outbox.jobs.create(job)
    await outbox.jobs.add_chunk(
        job.id, [notification(subject="row 2", tags=job.tags)], [RowError(3, None, "no email")], rows_done=3
    )

    # As another process reads it (a restart resumes the job with the same tags).
    resumed = await another_job_store(outbox).get(job.id)
    assert resumed is not None
    assert resumed.tags == ["spring", "newsletter"]
    assert await tagged_pages(outbox.notifications, "newsletter") == [["row 2"]]
    untagged = new_job(tmp_path)
    await outbox.jobs.create(untagged)
    stored = await outbox.jobs.get(untagged.id)
    assert stored is not None
    assert stored.tags == []
