"""The PostgreSQL notification store: replicas claim due notifications with `FOR UPDATE SKIP LOCKED`, so two
never take the same row, and every claim carries a lease: a replica that dies holding claims loses them when
the lease runs out, and another replica claims them again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from service.domain import HISTORY_LIMIT, Bounce, Outcome, Refusal, Status, reply_code
from service.outbox import webhooks
from service.outbox.errors import IdempotencyKeyTaken, QueueFull
from service.outbox.idempotency import IdempotencyRecord
from service.outbox.notifications import Notification, NotificationStore, Page
from service.outbox.postgres.database import CHANNEL, PostgresDatabase
from service.outbox.postgres.idempotency import insert_record
from service.outbox.postgres.suppressions import record_bounces
from service.outbox.postgres.webhooks import event_written, write_events
from service.outbox.rows import (
    attachment_rows,
    content_json,
    due_at,
    history_entry_json,
    notification_from_row,
    refused_json,
    unsent_among,
)

COLUMNS = (
    "seq, id, status, content, message_id, request_id, attempts, last_error, smtp_reply, refused,"
    " created_at, updated_at, sent_at, next_attempt_at, history, send_at, sender"
)


def append_history(parameter: int) -> str:
    """Appends the entry in $`parameter` to `history`, dropping the oldest past HISTORY_LIMIT (`- 0`)."""
    return (
        f"history = CASE WHEN jsonb_array_length(coalesce(history, '[]')) >= {HISTORY_LIMIT} THEN history - 0"
        f" ELSE coalesce(history, '[]'::jsonb) END || jsonb_build_array(${parameter}::jsonb)"
    )


# What a recovered attempt's history says: whether the server took the mail is not known.
RECOVERED = "left sending by a replica that stopped; sent again, perhaps a second time"

# The same columns of the row being updated, for `UPDATE notifications AS n … FROM … RETURNING`.
_RETURNING = ", ".join(f"n.{column.strip()}" for column in COLUMNS.split(","))

# Notifications queued or sending, from the kept counts (migration 0003).
UNSENT_QUERY = (
    f"SELECT coalesce(sum(count), 0) FROM notification_counts WHERE status IN ('{Status.QUEUED}', '{Status.SENDING}')"
)


async def insert_notifications(
    conn: asyncpg.Connection, notifications: Sequence[Notification], *, job_id: str | None = None
) -> None:
    """Insert new notifications (`queued` and due at once, or `scheduled` and due at send_at) inside the
    caller's transaction, and wake every replica's dispatcher when it commits."""
    await conn.executemany(
        "INSERT INTO notifications (id, status, content, message_id, request_id, attempts,"
        " created_at, updated_at, next_attempt_at, job_id, refused, send_at, sender)"
        " VALUES ($1, $2, $3, $4, $5, 0, $6, $6, $7, $8, $9, $10, $11)",
        [
            (
                n.id,
                n.status,
                content_json(n),
                n.message_id,
                n.request_id,
                n.created_at,
                due_at(n),
                job_id,
                # Recipients left out at accept (suppressed): on record from the start.
                refused_json(n.refused_recipients) if n.refused_recipients else None,
                n.send_at,
                n.sender,
            )
            for n in notifications
        ],
    )
    # The tags, for `?tag=` (migration 0008): each (id, tag) pair finds its row's seq by the id's unique index.
    tagged = [(n.id, tag) for n in notifications for tag in n.tags]
    if tagged:
        await conn.execute(
            "INSERT INTO notification_tags (tag, seq) SELECT pair.tag, n.seq"
            " FROM unnest($1::text[], $2::text[]) AS pair (id, tag) JOIN notifications AS n ON n.id = pair.id",
            [notification_id for notification_id, _ in tagged],
            [tag for _, tag in tagged],
        )
    attachments = attachment_rows(notifications)
    if attachments:
        await conn.executemany(
            "INSERT INTO attachments (notification_id, position, data) VALUES ($1, $2, $3)", attachments
        )
    # Delivered to every listener when (and only if) the transaction commits.
    await conn.execute(f"NOTIFY {CHANNEL}")


async def write_notification_event(
    conn: asyncpg.Connection, event_type: str, notification: Notification, now: float, urls: Sequence[str]
) -> None:
    """Inside the status change's transaction: its event, carrying the status object as it now is."""
    if event_type == webhooks.DELAYED and await event_written(conn, f"{webhooks.DELAYED}:{notification.id}"):
        return
    await write_events(conn, [webhooks.notification_event(event_type, notification, now)], urls)


class OutcomeBatch:
    """Outcome UPDATEs that change only their row (no bounce, no event), written together: whatever is handed in
    while one batch is at the server goes in the next, one transaction with one `executemany()` per statement
    (asyncpg sends its rows in one round trip). One commit, one WAL flush, for the batch instead of one per
    mail: a draining dispatcher's CPU per mail and PostgreSQL's own (docs/profile.md).

    Each caller is answered once its batch committed. The writer is a task of its own, started when a write
    arrives and none runs, so a caller that is cancelled never strands the others' writes."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database
        self._pending: list[tuple[str, tuple[Any, ...], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, sql: str, params: tuple[Any, ...]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((sql, params, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="outbox-outcomes")
        await future

    async def _write_pending(self) -> None:
        batch: list[tuple[str, tuple[Any, ...], asyncio.Future[None]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._write_batch(batch)
        except asyncio.CancelledError:
            # The event loop is ending: no caller may be left waiting for a batch that will never be written.
            for _, _, future in [*batch, *self._pending]:
                future.cancel()
            self._pending = []
            raise

    async def _write_batch(self, batch: list[tuple[str, tuple[Any, ...], asyncio.Future[None]]]) -> None:
        by_statement: dict[str, list[tuple[Any, ...]]] = {}
        for sql, params, _ in batch:
            by_statement.setdefault(sql, []).append(params)
        try:
            async with self._database.connection() as conn, conn.transaction():
                for sql, rows in by_statement.items():
                    await conn.executemany(sql, rows)
        except Exception as exc:
            if len(batch) > 1:
                # One outcome broke the shared transaction: each again in its own, so only the one at fault hears.
                for entry in batch:
                    await self._write_batch([entry])
                return
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for _, _, future in batch:
                if not future.done():
                    future.set_result(None)


class PostgresNotificationStore(NotificationStore):
    def __init__(
        self,
        database: PostgresDatabase,
        *,
        lease_seconds: float,
        queue_limit: int | None = None,
        webhook_urls: Sequence[str] = (),
    ) -> None:
        self.database = database
        self.lease_seconds = lease_seconds
        self.queue_limit = queue_limit
        # Set: every outcome writes its webhook event in its own transaction (none otherwise, at no cost).
        self.webhook_urls = tuple(webhook_urls)
        self._outcomes = OutcomeBatch(database)

    # -- accepting ----------------------------------------------------------------------------------------

    async def add(self, notifications: Sequence[Notification], *, idempotency: IdempotencyRecord | None = None) -> None:
        now = time.time()
        async with self.database.connection() as conn, conn.transaction():
            if self.queue_limit is not None:
                # The kept counts, committed by every replica: 64 rows summed, not a count of the backlog.
                # Under READ COMMITTED two replicas adding at the same moment may each see the other's rows
                # missing, so the queue can pass the limit by the adds in flight at once, never by more.
                counted = unsent_among(notifications)
                unsent = await conn.fetchval(UNSENT_QUERY) if counted else 0
                if counted and unsent + counted > self.queue_limit:
                    raise QueueFull(unsent, self.queue_limit, counted)
            if idempotency is not None and not await insert_record(conn, idempotency, now):
                raise IdempotencyKeyTaken(idempotency.key)
            await insert_notifications(conn, notifications)

    async def count_unsent(self) -> int:
        async with self.database.connection() as conn:
            return int(await conn.fetchval(UNSENT_QUERY))

    # -- reading ------------------------------------------------------------------------------------------

    async def get(self, notification_id: str) -> Notification | None:
        async with self.database.connection() as conn:
            row = await conn.fetchrow(f"SELECT {COLUMNS} FROM notifications WHERE id = $1", notification_id)
        return notification_from_row(row) if row else None

    async def page(self, *, status: Status | None, limit: int, cursor: str | None, tag: str | None = None) -> Page:
        before = int(cursor) if cursor else None
        async with self.database.connection() as conn:
            if tag is None:
                rows = await conn.fetch(
                    f"SELECT {COLUMNS} FROM notifications"
                    " WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR seq < $2)"
                    " ORDER BY seq DESC LIMIT $3",
                    status,
                    before,
                    limit + 1,
                )
            else:
                # Down the (tag, seq) primary key, newest first; each row by its seq.
                rows = await conn.fetch(
                    f"SELECT {_RETURNING} FROM notification_tags AS t JOIN notifications AS n ON n.seq = t.seq"
                    " WHERE t.tag = $4 AND ($1::text IS NULL OR n.status = $1) AND ($2::bigint IS NULL OR t.seq < $2)"
                    " ORDER BY t.seq DESC LIMIT $3",
                    status,
                    before,
                    limit + 1,
                    tag,
                )
        items = [notification_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(items=items, next_cursor=str(items[-1].seq) if more and items else None)

    async def page_for_recipient(
        self, *, recipient: str, status: Status | None, limit: int, cursor: str | None, scan: int
    ) -> Page:
        before = int(cursor) if cursor else None
        # One snapshot: the window's bounds and its matches.
        async with self.database.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            window = await conn.fetchrow(
                "SELECT min(seq) AS oldest, count(*) AS seen FROM (SELECT seq FROM notifications"
                " WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR seq < $2)"
                " ORDER BY seq DESC LIMIT $3) AS window_rows",
                status,
                before,
                scan,
            )
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM notifications"
                " WHERE seq >= $3 AND ($2::bigint IS NULL OR seq < $2) AND ($1::text IS NULL OR status = $1)"
                " AND strpos(lower(concat(content -> 'to', content -> 'cc', content -> 'bcc')), $4) > 0"
                " ORDER BY seq DESC LIMIT $5",
                status,
                before,
                window["oldest"],
                recipient.lower(),
                limit + 1,
            )
        return Page.of_window(
            [notification_from_row(row) for row in rows],
            limit=limit,
            oldest=window["oldest"],
            seen=window["seen"],
            scan=scan,
        )

    async def attachment_data(self, notification_id: str) -> list[bytes]:
        async with self.database.connection() as conn:
            rows = await conn.fetch(
                "SELECT data FROM attachments WHERE notification_id = $1 ORDER BY position", notification_id
            )
        return [row["data"] for row in rows]

    async def next_due_at(self) -> float | None:
        # A claim whose lease runs out is due then too: its replica may be gone.
        async with self.database.connection() as conn:
            due = await conn.fetchval(
                "SELECT least("
                f" (SELECT min(next_attempt_at) FROM notifications WHERE status = '{Status.QUEUED}'),"
                f" (SELECT min(next_attempt_at) FROM notifications WHERE status = '{Status.SCHEDULED}'),"
                f" (SELECT min(lease_until) FROM notifications WHERE status = '{Status.SENDING}'))"
            )
        return float(due) if due is not None else None

    # -- delivery state -----------------------------------------------------------------------------------

    async def recover(self) -> int:
        # Other replicas may be sending right now: only claims whose lease has run out are given back.
        now = time.time()
        async with self.database.connection() as conn:
            result = await conn.execute(
                f"UPDATE notifications SET status = '{Status.QUEUED}', lease_until = NULL, claimed_by = NULL,"
                f" updated_at = $1, {append_history(2)} WHERE status = '{Status.SENDING}' AND lease_until <= $1",
                now,
                history_entry_json(Outcome.RECOVERED, now, None, RECOVERED),
            )
        return int(result.split()[-1])

    async def claim(self, limit: int, now: float) -> list[Notification]:
        # Three index scans, each stopping after `limit` rows: claims whose lease ran out (a dead replica's), then
        # due queued rows, then due scheduled rows, earliest first (each status has its partial index). One
        # `WHERE … OR …` would read and sort the whole backlog instead (measured: 55 ms against 0.07 ms with
        # 100,000 queued rows).
        async with self.database.connection() as conn:
            rows = await conn.fetch(
                "WITH expired AS ("
                "   SELECT seq FROM notifications"
                f"  WHERE status = '{Status.SENDING}' AND lease_until <= $1"
                "   ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED),"
                " due AS ("
                "   SELECT seq FROM notifications"
                f"  WHERE status = '{Status.QUEUED}' AND next_attempt_at <= $1"
                "   ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED),"
                " scheduled AS ("
                "   SELECT seq FROM notifications"
                f"  WHERE status = '{Status.SCHEDULED}' AND next_attempt_at <= $1"
                "   ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                f" UPDATE notifications AS n SET status = '{Status.SENDING}', attempts = n.attempts + 1,"
                "  updated_at = $1, lease_until = $1::double precision + $3::double precision, claimed_by = $4"
                " FROM (SELECT seq FROM expired UNION ALL SELECT seq FROM due UNION ALL SELECT seq FROM scheduled"
                "   LIMIT $2) AS picked"
                " WHERE n.seq = picked.seq"
                f" RETURNING {_RETURNING}",
                now,
                limit,
                self.lease_seconds,
                self.database.replica,
            )
        return sorted((notification_from_row(row) for row in rows), key=lambda n: (n.next_attempt_at, n.seq or 0))

    async def release(self, notification_ids: Sequence[str]) -> None:
        async with self.database.connection() as conn:
            await conn.execute(
                f"UPDATE notifications SET status = '{Status.QUEUED}', attempts = attempts - 1, lease_until = NULL,"
                f" claimed_by = NULL, updated_at = $1 WHERE id = ANY($2::text[]) AND status = '{Status.SENDING}'"
                " AND claimed_by = $3",
                time.time(),
                list(notification_ids),
                self.database.replica,
            )

    async def hold(self, notification_ids: Sequence[str], now: float) -> None:
        # A fresh lease on each claim this replica still holds, so that none runs out while its outcome waits.
        async with self.database.connection() as conn:
            await conn.execute(
                "UPDATE notifications SET lease_until = $1::double precision + $2::double precision"
                f" WHERE id = ANY($3::text[]) AND status = '{Status.SENDING}' AND claimed_by = $4",
                now,
                self.lease_seconds,
                list(notification_ids),
                self.database.replica,
            )

    async def _finish(
        self,
        assignments: str,
        notification_id: str,
        attempt: int | None,
        *args: Any,
        bounces: Sequence[Bounce] = (),
        now: float = 0.0,
        event: str | None = None,
    ) -> None:
        # With `attempt`, the outcome only lands while the row is still that claim's: a replica whose lease ran
        # out and whose row another replica claimed again (attempts + 1) cannot overwrite the newer claim.
        # An outcome with a bounce or an event is written in its own transaction with them; the others (every
        # outcome without WEBHOOK_URLS, but for hard bounces) are batched with each other.
        event = event if self.webhook_urls else None
        sql = (
            f"UPDATE notifications SET {assignments}, lease_until = NULL"
            " WHERE id = $1 AND ($2::integer IS NULL"
            f"   OR (status = '{Status.SENDING}' AND attempts = $2 AND claimed_by = $" + str(len(args) + 3) + "))"
        )
        # attempts alone is not unique: a failed notification requeued by an operator starts again at 1.
        params = (notification_id, attempt, *args, self.database.replica)
        if not bounces and event is None:
            # Nothing to write beside the row, so nothing depends on whether it landed: batched with the others.
            await self._outcomes.write(sql, params)
            return
        async with (
            self.database.connection() as conn,
            conn.transaction(),
        ):
            row = None
            if event is None:
                landed = (await conn.execute(sql, *params)).split()[-1] != "0"
            else:
                row = await conn.fetchrow(f"{sql} RETURNING {COLUMNS}", *params)
                landed = row is not None
            if bounces and landed:
                await record_bounces(conn, bounces, notification_id, now)
            if event is not None and row is not None:
                await write_notification_event(conn, event, notification_from_row(row), now, self.webhook_urls)

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
        await self._finish(
            f"status = '{Status.SENT}', smtp_reply = $3, refused = $4, sent_at = $5, updated_at = $5,"
            f" {append_history(6)}",
            notification_id,
            attempt,
            smtp_reply,
            refused_json(refused) if refused else None,
            now,
            history_entry_json(Outcome.SENT, now, reply_code(smtp_reply), smtp_reply),
            bounces=bounces,
            now=now,
            event=webhooks.SENT,
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
        await self._finish(
            f"status = '{Status.QUEUED}', last_error = $3, next_attempt_at = $4, updated_at = $5, claimed_by = NULL,"
            " content = CASE WHEN $6::jsonb IS NULL THEN content ELSE jsonb_set(content, '{envelope}', $6::jsonb) END,"
            f" refused = COALESCE($7::jsonb, refused), {append_history(8)}",
            notification_id,
            attempt,
            error,
            next_attempt_at,
            now,
            json.dumps(envelope) if envelope else None,
            refused_json(refused) if refused is not None else None,
            history_entry_json(outcome, now, smtp_code, error),
            bounces=bounces,
            now=now,
            # A send that shutdown cut short is no failure of the mail: no event.
            event=webhooks.DELAYED if outcome == Outcome.RETRY else None,
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
        await self._finish(
            f"status = '{Status.FAILED}', last_error = $3, refused = $4, updated_at = $5, {append_history(6)}",
            notification_id,
            attempt,
            error,
            refused_json(refused) if refused else None,
            now,
            history_entry_json(Outcome.FAILED, now, smtp_code, error),
            bounces=bounces,
            now=now,
            event=webhooks.FAILED,
        )

    async def cancel(self, notification_id: str, now: float) -> Notification | None:
        # A claim holds its rows locked until it commits; this UPDATE then waits for it and, under READ COMMITTED,
        # checks the WHERE again on the claimed row (now `sending`): no match, the claim wins. And a row this
        # UPDATE holds is skipped by the claims (SKIP LOCKED), then seen `canceled`.
        async with self.database.connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE notifications SET status = '{Status.CANCELED}', updated_at = $2, {append_history(3)}"
                f" WHERE id = $1 AND status IN ('{Status.SCHEDULED}', '{Status.QUEUED}') RETURNING {COLUMNS}",
                notification_id,
                now,
                history_entry_json(Outcome.CANCELED, now, None, None),
            )
            if row is None:
                return None
            canceled = notification_from_row(row)
            if self.webhook_urls:
                await write_notification_event(conn, webhooks.CANCELED, canceled, now, self.webhook_urls)
        return canceled

    async def reschedule(self, notification_id: str, send_at: float, now: float) -> Notification | None:
        # As cancel(): a claim holds its row locked, and this UPDATE then finds it `sending`: the claim wins.
        async with self.database.connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE notifications SET send_at = $2, next_attempt_at = $2, updated_at = $3"
                f" WHERE id = $1 AND status = '{Status.SCHEDULED}' RETURNING {COLUMNS}",
                notification_id,
                send_at,
                now,
            )
            if row is None:
                return None
            # Earlier than before, maybe: every replica's dispatcher looks again at when to wake.
            await conn.execute(f"NOTIFY {CHANNEL}")
        return notification_from_row(row)

    async def requeue_failed(self, notification_id: str, now: float) -> Notification | None:
        async with self.database.connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE notifications SET status = '{Status.QUEUED}', attempts = 0, next_attempt_at = $2,"
                f" updated_at = $2, {append_history(3)}"
                f" WHERE id = $1 AND status = '{Status.FAILED}' RETURNING {COLUMNS}",
                notification_id,
                now,
                history_entry_json(Outcome.REQUEUED, now, None, None),
            )
            if row:
                await conn.execute(f"NOTIFY {CHANNEL}")
        return notification_from_row(row) if row else None

    # -- wake-ups -----------------------------------------------------------------------------------------

    def subscribe(self, wake: Callable[[], None]) -> None:
        self.database.subscribe(wake)
