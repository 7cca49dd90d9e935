"""Attachments in the outbox, against both backends: the bytes in a table of their own, written with their
notification, read for one send, and never touched by a claim, a listing or get()."""

from __future__ import annotations

import os
import sqlite3

import pytest

from service.outbox import AttachmentInfo, Notification, Outbox, QueueFull
from service.outbox.postgres.database import PostgresDatabase
from service.outbox.sqlite.database import SqliteDatabase
from tests.outbox.backends import Backend, notification

PDF = b"%PDF-1.7\n" + os.urandom(3000) + b"\x00\xff"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(500)


def with_attachments() -> Notification:
    return notification(
        html='<img src="cid:logo">',
        attachments=[
            AttachmentInfo("rapport été.pdf", "application/pdf", len(PDF)),
            AttachmentInfo("logo.png", "image/png", len(PNG), "logo"),
        ],
        attachment_data=[PDF, PNG],
    )


async def _execute(outbox: Outbox, sql: str) -> None:
    if isinstance(outbox.database, SqliteDatabase):

        def run(db: sqlite3.Connection) -> None:
            db.execute(sql)

        await outbox.database.write(run)
        return
    assert isinstance(outbox.database, PostgresDatabase)
    async with outbox.database.connection() as conn:
        await conn.execute(sql)


async def test_the_bytes_are_stored_with_the_notification_and_read_back_in_order(outbox: Outbox) -> None:
    store = outbox.notifications
    n = with_attachments()
    plain = notification()

    await store.add([n, plain])

    assert await store.attachment_data(n.id) == [PDF, PNG]
    assert await store.attachment_data(plain.id) == []
    stored = await store.get(n.id)
    assert stored is not None
    assert stored.attachments == n.attachments
    # What a read gives is metadata: the bytes stay in their table.
    assert stored.attachment_data == []


async def test_a_refused_add_stores_no_attachment(backend: Backend) -> None:
    outbox = backend.make(queue_limit=1)
    await outbox.open()
    try:
        await outbox.notifications.add([notification()])
        n = with_attachments()
        with pytest.raises(QueueFull):
            await outbox.notifications.add([n])
        assert await outbox.notifications.attachment_data(n.id) == []
    finally:
        await outbox.close()


async def test_claims_pages_and_gets_never_read_the_attachments_table(outbox: Outbox) -> None:
    """With the attachments table out of reach (renamed), everything but attachment_data() still works: a claim or a
    listing that joined the bytes in would fail here."""
    store = outbox.notifications
    n = with_attachments()
    await store.add([n])

    await _execute(outbox, "ALTER TABLE attachments RENAME TO attachments_out_of_reach")
    try:
        with pytest.raises(Exception, match="attachments"):
            await store.attachment_data(n.id)
        page = await store.page(status=None, limit=10, cursor=None)
        found = await store.page_for_recipient(
            recipient="ada@example.com", status=None, limit=10, cursor=None, scan=100
        )
        got = await store.get(n.id)
        [claimed] = await store.claim(10, n.created_at + 1)
        await store.mark_sent(claimed.id, smtp_reply="250 OK", refused=[], now=n.created_at + 2, attempt=1)
    finally:
        await _execute(outbox, "ALTER TABLE attachments_out_of_reach RENAME TO attachments")

    for read in (page.items[0], found.items[0], got, claimed):
        assert read is not None
        assert [a.filename for a in read.attachments] == ["rapport été.pdf", "logo.png"]
        assert read.attachment_data == []
    assert await store.attachment_data(n.id) == [PDF, PNG]
