"""The SQLite notification store: inserts and send outcomes go through the file's group commit.

The queue limit is checked inside each insert transaction against the counts the triggers keep (migration
0003): two rows read per group commit, exact whichever process sent the mail (the dispatcher may run in a
process of its own, service/delivery/process.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.domain import HISTORY_LIMIT, Bounce, Outcome, Refusal, Status, reply_code
from service.outbox import webhooks
from service.outbox.errors import IdempotencyKeyTaken, OutboxUnavailable, QueueFull
from service.outbox.idempotency import IdempotencyRecord
from service.outbox.notifications import Notification, NotificationStore, Page
from service.outbox.rows import (
    attachment_rows,
    content_json,
    due_at,
    history_entry_json,
    notification_from_row,
    refused_json,
    unsent_among,
)
from service.outbox.sqlite.database import SqliteDatabase
from service.outbox.sqlite.idempotency import insert_record
from service.outbox.sqlite.suppressions import record_bounces
from service.outbox.sqlite.webhooks import event_written, write_events

# What one add() asks for: its notifications, maybe an idempotency record.
_Insert = tuple[Sequence[Notification], IdempotencyRecord | None]


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What a send's outcome (mark_sent, mark_retry, mark_failed) asks for: one guarded UPDATE, and the hard
    bounces it found, written only if the UPDATE landed."""

    sql: str
    params: dict[str, Any]
    bounces: Sequence[Bounce] = ()
    # The webhook event it causes (a type of service.outbox.webhooks) and the URLs it goes to; none without URLs.
    event: str | None = None
    webhook_urls: Sequence[str] = ()

    def write(self, db: sqlite3.Connection) -> None:
        landed = db.execute(self.sql, self.params).rowcount
        if landed and self.bounces:
            record_bounces(db, self.bounces, self.params["id"], self.params["now"])
        if landed and self.event is not None and self.webhook_urls:
            write_notification_event(db, self.event, self.params["id"], self.params["now"], self.webhook_urls)


def write_notification_event(
    db: sqlite3.Connection, event_type: str, notification_id: str, now: float, urls: Sequence[str]
) -> None:
    """Inside the status change's transaction: its event, carrying the status object as it now is."""
    if event_type == webhooks.DELAYED and event_written(db, f"{webhooks.DELAYED}:{notification_id}"):
        return
    row = db.execute(f"SELECT {COLUMNS} FROM notifications WHERE id = ?", (notification_id,)).fetchone()
    write_events(db, [webhooks.notification_event(event_type, notification_from_row(row), now)], urls)


# Every write that waits for the next group commit.
_Write = _Insert | _Outcome

# Many rows in one INSERT (see insert_notifications): 12 parameters a row, well under SQLite's limit of 32,766.
_INSERT = (
    "INSERT INTO notifications (id, status, content, message_id, request_id, attempts,"
    " created_at, updated_at, next_attempt_at, job_id, refused, send_at, sender) VALUES "
)
_INSERT_ROW = "(?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)"
_ROWS_PER_INSERT = 500

COLUMNS = (
    "seq, id, status, content, message_id, request_id, attempts, last_error, smtp_reply, refused,"
    " created_at, updated_at, sent_at, next_attempt_at, history, send_at, sender"
)

# Appends :entry to `history`, dropping the oldest past HISTORY_LIMIT ('$[#]' removes nothing: below the limit).
_APPEND_HISTORY = (
    "history = json_remove(json_insert(coalesce(history, '[]'), '$[#]', json(:entry)),"
    f" CASE WHEN json_array_length(coalesce(history, '[]')) >= {HISTORY_LIMIT} THEN '$[0]' ELSE '$[#]' END)"
)

# With an `attempt`, an outcome only lands while the row is still that claim's (see NotificationStore.mark_sent).
_STILL_CLAIMED = f"AND (:attempt IS NULL OR (status = '{Status.SENDING}' AND attempts = :attempt))"


def insert_notifications(
    db: sqlite3.Connection, notifications: Sequence[Notification], *, job_id: str | None = None
) -> None:
    """Insert new notifications (`queued` and due at once, or `scheduled` and due at send_at) inside the caller's
    transaction.

    One statement for many rows, not executemany(): sqlite3 lets go of the GIL for every step of a
    statement, and on a busy event loop each row then waited for the GIL to come back (a group of 25
    requests took 9 ms instead of well under one)."""
    for start in range(0, len(notifications), _ROWS_PER_INSERT):
        chunk = notifications[start : start + _ROWS_PER_INSERT]
        params: list[Any] = []
        for n in chunk:
            params += (
                n.id,
                n.status,
                content_json(n),
                n.message_id,
                n.request_id,
                n.created_at,
                n.created_at,
                due_at(n),
                job_id,
                # Recipients left out at accept (suppressed): on record from the start.
                refused_json(n.refused_recipients) if n.refused_recipients else None,
                n.send_at,
                n.sender,
            )
        db.execute(_INSERT + ", ".join([_INSERT_ROW] * len(chunk)), params)
    insert_tags(db, notifications)
    # Few, and large: one row each, executemany's GIL cost is nothing beside copying megabytes.
    attachments = attachment_rows(notifications)
    if attachments:
        db.executemany("INSERT INTO attachments (notification_id, position, data) VALUES (?, ?, ?)", attachments)


# Each (id, tag) pair finds its row's seq by the id's unique index: one statement for the whole insert.
_INSERT_TAGS = (
    "INSERT INTO notification_tags (tag, seq) SELECT json_extract(pair.value, '$[1]'), n.seq"
    " FROM json_each(?) AS pair JOIN notifications AS n ON n.id = json_extract(pair.value, '$[0]')"
)


def insert_tags(db: sqlite3.Connection, notifications: Sequence[Notification]) -> None:
    """The tags of just-inserted notifications, for `?tag=` (migration 0008); nothing when none has tags."""
    pairs = [(n.id, tag) for n in notifications for tag in n.tags]
    if pairs:
        db.execute(_INSERT_TAGS, (json.dumps(pairs),))


def count_unsent(db: sqlite3.Connection) -> int:
    return int(
        db.execute(
            "SELECT coalesce(sum(count), 0) FROM notification_counts"
            f" WHERE status IN ('{Status.QUEUED}', '{Status.SENDING}')"
        ).fetchone()[0]
    )


# What a recovered attempt's history says: whether the server took the mail is not known.
_RECOVERED = "left sending by a process that stopped; sent again, perhaps a second time"


class SqliteNotificationStore(NotificationStore):
    def __init__(
        self, database: SqliteDatabase, *, queue_limit: int | None = None, webhook_urls: Sequence[str] = ()
    ) -> None:
        self.database = database
        self.queue_limit = queue_limit
        # Set: every outcome writes its webhook event in its own transaction (none otherwise, at no cost).
        self.webhook_urls = tuple(webhook_urls)
        self._group_commit = database.group_commit(self._write_group)

    # -- accepting ----------------------------------------------------------------------------------------

    async def add(self, notifications: Sequence[Notification], *, idempotency: IdempotencyRecord | None = None) -> None:
        if not self._group_commit.running:
            # Nothing would ever write it: say so rather than wait forever.
            raise OutboxUnavailable(f"outbox {self.database.path}: not open")
        await self._group_commit.write((notifications, idempotency))

    def _write_group(self, db: sqlite3.Connection, writes: list[_Write]) -> list[Exception | None]:
        """Inside the group's one transaction: the outcomes first (what they finish frees room under the queue
        limit), then the inserts; a group refused (queue full, key taken) is skipped, the others go in."""
        now = time.time()
        refusals: list[Exception | None] = [None] * len(writes)
        for write in writes:
            if isinstance(write, _Outcome):
                write.write(db)
        inserts = any(not isinstance(write, _Outcome) for write in writes)
        # Read only for inserts: a group of outcomes alone (a draining dispatcher's) needs no count.
        unsent = count_unsent(db) if self.queue_limit is not None and inserts else 0
        accepted: list[Notification] = []
        for number, write in enumerate(writes):
            if isinstance(write, _Outcome):
                continue
            notifications, idempotency = write
            counted = unsent_among(notifications)
            if self.queue_limit is not None and counted and unsent + counted > self.queue_limit:
                refusals[number] = QueueFull(unsent, self.queue_limit, counted)
                continue
            if idempotency is not None and not insert_record(db, idempotency, now):
                refusals[number] = IdempotencyKeyTaken(idempotency.key)
                continue
            accepted.extend(notifications)
            unsent += counted
        insert_notifications(db, accepted)
        return refusals

    async def count_unsent(self) -> int:
        return await self.database.read(count_unsent)

    # -- reading ------------------------------------------------------------------------------------------

    async def get(self, notification_id: str) -> Notification | None:
        def get(db: sqlite3.Connection) -> Notification | None:
            row = db.execute(f"SELECT {COLUMNS} FROM notifications WHERE id = ?", (notification_id,)).fetchone()
            return notification_from_row(row) if row else None

        return await self.database.read(get)

    async def page(self, *, status: Status | None, limit: int, cursor: str | None, tag: str | None = None) -> Page:
        before = int(cursor) if cursor else None
        params = {"status": status, "before": before, "limit": limit + 1, "tag": tag}

        def page(db: sqlite3.Connection) -> Page:
            if tag is None:
                rows = db.execute(
                    f"SELECT {COLUMNS} FROM notifications"
                    " WHERE (:status IS NULL OR status = :status) AND (:before IS NULL OR seq < :before)"
                    " ORDER BY seq DESC LIMIT :limit",
                    params,
                ).fetchall()
            else:
                # Down the (tag, seq) index, newest first; each row by its primary key.
                rows = db.execute(
                    f"SELECT {COLUMNS} FROM notification_tags AS t JOIN notifications USING (seq)"
                    " WHERE t.tag = :tag AND (:before IS NULL OR t.seq < :before)"
                    " AND (:status IS NULL OR status = :status)"
                    " ORDER BY t.seq DESC LIMIT :limit",
                    params,
                ).fetchall()
            items = [notification_from_row(row) for row in rows[:limit]]
            more = len(rows) > limit
            return Page(items=items, next_cursor=str(items[-1].seq) if more and items else None)

        return await self.database.read(page)

    async def page_for_recipient(
        self, *, recipient: str, status: Status | None, limit: int, cursor: str | None, scan: int
    ) -> Page:
        params = {
            "status": status,
            "before": int(cursor) if cursor else None,
            "scan": scan,
            "needle": recipient.lower(),
            "limit": limit + 1,
        }

        def search(db: sqlite3.Connection) -> Page:
            # One read transaction: the window's bounds and its matches are one snapshot.
            db.execute("BEGIN")
            try:
                oldest, seen = db.execute(
                    "SELECT min(seq), count(*) FROM (SELECT seq FROM notifications"
                    " WHERE (:status IS NULL OR status = :status) AND (:before IS NULL OR seq < :before)"
                    " ORDER BY seq DESC LIMIT :scan)",
                    params,
                ).fetchone()
                rows = db.execute(
                    f"SELECT {COLUMNS} FROM notifications"
                    " WHERE seq >= :oldest AND (:before IS NULL OR seq < :before)"
                    " AND (:status IS NULL OR status = :status)"
                    " AND instr(lower(json_extract(content, '$.to') || json_extract(content, '$.cc')"
                    " || json_extract(content, '$.bcc')), :needle) > 0"
                    " ORDER BY seq DESC LIMIT :limit",
                    {**params, "oldest": oldest},
                ).fetchall()
            finally:
                db.execute("COMMIT")
            return Page.of_window(
                [notification_from_row(row) for row in rows], limit=limit, oldest=oldest, seen=seen, scan=scan
            )

        return await self.database.read(search)

    async def attachment_data(self, notification_id: str) -> list[bytes]:
        def read(db: sqlite3.Connection) -> list[bytes]:
            rows = db.execute(
                "SELECT data FROM attachments WHERE notification_id = ? ORDER BY position", (notification_id,)
            ).fetchall()
            return [bytes(row[0]) for row in rows]

        return await self.database.read(read)

    async def next_due_at(self) -> float | None:
        def next_due(db: sqlite3.Connection) -> float | None:
            # The (status, next_attempt_at) index answers each status's minimum at once.
            row = db.execute(
                "SELECT min(due) FROM ("
                f" SELECT min(next_attempt_at) AS due FROM notifications WHERE status = '{Status.QUEUED}'"
                f" UNION ALL SELECT min(next_attempt_at) FROM notifications WHERE status = '{Status.SCHEDULED}')"
            ).fetchone()
            return row[0] if row else None

        return await self.database.read(next_due)

    # -- delivery state -----------------------------------------------------------------------------------

    async def recover(self) -> int:
        now = time.time()

        def recover(db: sqlite3.Connection) -> int:
            return db.execute(
                f"UPDATE notifications SET status = '{Status.QUEUED}', updated_at = :now, {_APPEND_HISTORY}"
                f" WHERE status = '{Status.SENDING}'",
                {"now": now, "entry": history_entry_json(Outcome.RECOVERED, now, None, _RECOVERED)},
            ).rowcount

        return await self.database.write(recover)

    async def claim(self, limit: int, now: float) -> list[Notification]:
        def claim(db: sqlite3.Connection) -> list[Notification]:
            rows = db.execute(
                f"UPDATE notifications SET status = '{Status.SENDING}', attempts = attempts + 1, updated_at = :now"
                " WHERE seq IN (SELECT seq FROM notifications"
                f"   WHERE status IN ('{Status.QUEUED}', '{Status.SCHEDULED}') AND next_attempt_at <= :now"
                "   ORDER BY next_attempt_at LIMIT :limit)"
                f" RETURNING {COLUMNS}",
                {"now": now, "limit": limit},
            ).fetchall()
            return sorted((notification_from_row(row) for row in rows), key=lambda n: (n.next_attempt_at, n.seq or 0))

        return await self.database.write(claim)

    async def release(self, notification_ids: Sequence[str]) -> None:
        now = time.time()

        def release(db: sqlite3.Connection) -> None:
            db.executemany(
                f"UPDATE notifications SET status = '{Status.QUEUED}', attempts = attempts - 1, updated_at = ?"
                f" WHERE id = ? AND status = '{Status.SENDING}'",
                [(now, notification_id) for notification_id in notification_ids],
            )

        await self.database.write(release)

    async def _update(
        self, sql: str, params: dict[str, Any], bounces: Sequence[Bounce] = (), event: str | None = None
    ) -> None:
        """An outcome, group-committed with whatever else is waiting: the eight workers of a busy dispatcher
        finish close together, and one transaction for their outcomes costs a fraction of eight."""
        outcome = _Outcome(sql, params, bounces, event, self.webhook_urls)
        if not self._group_commit.running:
            await self.database.write(outcome.write)
            return
        await self._group_commit.write(outcome)

    async def mark_sent(
        self,
        notification_id: str,
        *,
        smtp_reply: str,
        refused: Sequence[Refusal],
        now: float,
        attempt: int | None = None,
        bounces: Sequence[Bounce] = (),
    ) -> None:
        await self._update(
            f"UPDATE notifications SET status = '{Status.SENT}', smtp_reply = :reply, refused = :refused,"
            f" sent_at = :now, updated_at = :now, {_APPEND_HISTORY} WHERE id = :id {_STILL_CLAIMED}",
            {
                "id": notification_id,
                "attempt": attempt,
                "reply": smtp_reply,
                "refused": refused_json(refused) if refused else None,
                "now": now,
                "entry": history_entry_json(Outcome.SENT, now, reply_code(smtp_reply), smtp_reply),
            },
            bounces,
            webhooks.SENT,
        )

    async def mark_retry(
        self,
        notification_id: str,
        *,
        error: str,
        next_attempt_at: float,
        now: float,
        attempt: int | None = None,
        envelope: list[str] | None = None,
        refused: Sequence[Refusal] | None = None,
        smtp_code: int | None = None,
        outcome: Outcome = Outcome.RETRY,
        bounces: Sequence[Bounce] = (),
    ) -> None:
        await self._update(
            f"UPDATE notifications SET status = '{Status.QUEUED}', last_error = :error,"
            f" next_attempt_at = :next, updated_at = :now, {_APPEND_HISTORY},"
            " content = CASE WHEN :envelope IS NULL THEN content"
            "   ELSE json_set(content, '$.envelope', json(:envelope)) END,"
            " refused = CASE WHEN :refused IS NULL THEN refused ELSE :refused END"
            f" WHERE id = :id {_STILL_CLAIMED}",
            {
                "id": notification_id,
                "attempt": attempt,
                "error": error,
                "next": next_attempt_at,
                "now": now,
                "envelope": json.dumps(envelope) if envelope else None,
                "refused": refused_json(refused) if refused is not None else None,
                "entry": history_entry_json(outcome, now, smtp_code, error),
            },
            bounces,
            # A send that shutdown cut short is no failure of the mail: no event.
            webhooks.DELAYED if outcome == Outcome.RETRY else None,
        )

    async def mark_failed(
        self,
        notification_id: str,
        *,
        error: str,
        refused: Sequence[Refusal],
        now: float,
        attempt: int | None = None,
        smtp_code: int | None = None,
        bounces: Sequence[Bounce] = (),
    ) -> None:
        await self._update(
            f"UPDATE notifications SET status = '{Status.FAILED}', last_error = :error, refused = :refused,"
            f" updated_at = :now, {_APPEND_HISTORY} WHERE id = :id {_STILL_CLAIMED}",
            {
                "id": notification_id,
                "attempt": attempt,
                "error": error,
                "refused": refused_json(refused) if refused else None,
                "now": now,
                "entry": history_entry_json(Outcome.FAILED, now, smtp_code, error),
            },
            bounces,
            webhooks.FAILED,
        )

    async def cancel(self, notification_id: str, now: float) -> Notification | None:
        def cancel(db: sqlite3.Connection) -> Notification | None:
            row = db.execute(
                f"UPDATE notifications SET status = '{Status.CANCELED}', updated_at = :now, {_APPEND_HISTORY}"
                f" WHERE id = :id AND status IN ('{Status.SCHEDULED}', '{Status.QUEUED}') RETURNING {COLUMNS}",
                {"id": notification_id, "now": now, "entry": history_entry_json(Outcome.CANCELED, now, None, None)},
            ).fetchone()
            if row is None:
                return None
            canceled = notification_from_row(row)
            if self.webhook_urls:
                write_events(db, [webhooks.notification_event(webhooks.CANCELED, canceled, now)], self.webhook_urls)
            return canceled

        return await self.database.write(cancel)

    async def reschedule(self, notification_id: str, send_at: float, now: float) -> Notification | None:
        def reschedule(db: sqlite3.Connection) -> Notification | None:
            row = db.execute(
                "UPDATE notifications SET send_at = :send_at, next_attempt_at = :send_at, updated_at = :now"
                f" WHERE id = :id AND status = '{Status.SCHEDULED}' RETURNING {COLUMNS}",
                {"id": notification_id, "send_at": send_at, "now": now},
            ).fetchone()
            return notification_from_row(row) if row else None

        return await self.database.write(reschedule)

    async def requeue_failed(self, notification_id: str, now: float) -> Notification | None:
        def requeue(db: sqlite3.Connection) -> Notification | None:
            row = db.execute(
                f"UPDATE notifications SET status = '{Status.QUEUED}', attempts = 0, next_attempt_at = :now,"
                f" updated_at = :now, {_APPEND_HISTORY}"
                f" WHERE id = :id AND status = '{Status.FAILED}' RETURNING {COLUMNS}",
                {"id": notification_id, "now": now, "entry": history_entry_json(Outcome.REQUEUED, now, None, None)},
            ).fetchone()
            return notification_from_row(row) if row else None

        return await self.database.write(requeue)
