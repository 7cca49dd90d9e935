"""The SQLite outbox: one file in WAL mode, one connection owned by one thread.

sqlite3 blocks, so every statement runs on a single dedicated thread, never on the event loop. Inserts and
send outcomes are group-committed: what arrives while a commit is on disk is written together in the next
transaction, and each caller is answered only after the transaction holding its write has committed.

The queue limit is checked inside each insert transaction against the counts the triggers keep (migration
0003): two rows read per group commit, exact whichever process sent the mail (the dispatcher may run in a
process of its own, service/delivery/process.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from service.outbox import (
    FAILED,
    QUEUED,
    SENDING,
    SENT,
    STATUSES,
    ErrorEntry,
    IdempotencyKeyTaken,
    IdempotencyRecord,
    Notification,
    Outbox,
    OutboxUnavailable,
    Page,
    QueueFull,
    QueueGauges,
    QueueStats,
    read_migrations,
)
from service.outbox.rows import content_json, notification_from_row

T = TypeVar("T")

# What one add() asks for: its notifications, maybe an idempotency record.
_Insert = tuple[Sequence[Notification], IdempotencyRecord | None]


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What a send's outcome (mark_sent, mark_retry, mark_failed) asks for: one guarded UPDATE."""

    sql: str
    params: dict[str, Any]


# Every write that waits for the next group commit, with the future that answers it.
_Write = _Insert | _Outcome

# How long a statement waits for another connection's write lock before it fails.
BUSY_TIMEOUT_MS = 30_000
PROBE_BUSY_TIMEOUT_MS = 1_000
# Between tries while another process (the dispatcher's) holds the write lock. SQLite's own busy handler sleeps
# 1, 2, 5, 10, 15… ms between tries, so a lock held for a millisecond could cost the HTTP process 30 ms
# (measured under load: p95 9 ms, max 32 ms to begin a transaction); tried every 0.2 ms, a wait lasts about
# as long as the lock is held.
LOCK_RETRY_SECONDS = 0.0002

# Many rows in one INSERT (see insert_notifications): 8 parameters a row, well under SQLite's limit of 32,766.
_INSERT = (
    "INSERT INTO notifications (id, status, content, message_id, request_id, attempts,"
    " created_at, updated_at, next_attempt_at, job_id) VALUES "
)
_INSERT_ROW = "(?, 'queued', ?, ?, ?, 0, ?, ?, ?, ?)"
_ROWS_PER_INSERT = 500

_COLUMNS = (
    "seq, id, status, content, message_id, request_id, attempts, last_error, smtp_reply, refused,"
    " created_at, updated_at, sent_at, next_attempt_at"
)


# With an `attempt`, an outcome only lands while the row is still that claim's (see Outbox.mark_sent).
_STILL_CLAIMED = f"AND (:attempt IS NULL OR (status = '{SENDING}' AND attempts = :attempt))"


def split_statements(script: str) -> list[str]:
    """A migration file's statements, each whole: a trigger's BEGIN … END, with the semicolons inside it, is
    one. (executescript() would do the splitting, but it commits first, and a migration must be atomic.)"""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if any(line.strip() and not line.strip().startswith("--") for line in pending.splitlines()):
        statements.append(pending.strip())
    return statements


class SqliteOutbox(Outbox):
    def __init__(
        self, path: Path | str, *, synchronous: str = "NORMAL", queue_limit: int | None = None, lock: bool = True
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.queue_limit = queue_limit
        # False only in the dispatcher's own process, which holds its parent's lock (inherited, not taken).
        self.lock = lock
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._pending: list[tuple[_Write, asyncio.Future[None]]] = []
        self._pending_added = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._lock_file: BinaryIO | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._connect)
        except BaseException as exc:
            # Nothing stays held by an outbox that did not open: not the file's lock, not the thread.
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None
            self._thread.shutdown(wait=False)
            if isinstance(exc, sqlite3.Error):
                raise OutboxUnavailable(f"outbox {self.path}: {exc}") from exc
            raise
        self._writer = asyncio.create_task(self._write_pending_forever(), name="outbox-writer")

    @property
    def lock_fd(self) -> int | None:
        """The locked file's descriptor, for the dispatcher's process to inherit: the lock then lasts until
        both processes are gone."""
        return self._lock_file.fileno() if self._lock_file is not None else None

    def _lock(self) -> None:
        """One service per outbox file: its claims are its own, and a second service would put the first one's
        live claims back in the queue at its start (sending them twice). The lock is the kernel's (flock), so it
        goes with the process, even on SIGKILL."""
        lock_file = open(f"{self.path}.lock", "a+b")  # noqa: SIM115 - held open for the outbox's lifetime
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise OutboxUnavailable(
                f"outbox {self.path} is in use by another process; one process per SQLite outbox"
                " (several replicas share a PostgreSQL outbox: OUTBOX_URL)"
            ) from None
        self._lock_file = lock_file

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.lock:
            self._lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly what we say.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            self._prepare(db)
        except BaseException:
            # Not a database, a migration that failed, a disk that is full: nothing stays open behind the error.
            db.close()
            raise
        self._db = db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, _name, script in read_migrations("sqlite"):
                if number > version:
                    for statement in split_statements(script):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        # From here on a locked file fails at once and _call() tries again, every LOCK_RETRY_SECONDS (the
        # migrations above waited in SQLite's own handler).
        db.execute("PRAGMA busy_timeout=0")

    async def close(self) -> None:
        if self._writer is not None:
            # The writer drains what is pending before it returns: every add() that was called is answered.
            self._closing = True
            self._pending_added.set()
            await self._writer
            self._writer = None
        await self._run(lambda db: db.close())
        self._db = None
        self._thread.shutdown(wait=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    async def schema_version(self) -> int:
        return int(await self._run(lambda db: db.execute("PRAGMA user_version").fetchone()[0]))

    # -- plumbing ------------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, self._call, fn, args)
        except sqlite3.Error as exc:
            raise OutboxUnavailable(f"outbox {self.path}: {exc}") from exc

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """`fn(db)`, tried again while another connection holds the lock it needs (up to BUSY_TIMEOUT_MS): a
        transaction that met the lock was rolled back whole, so the next try starts clean."""
        if self._db is None:
            raise sqlite3.ProgrammingError("the outbox is not open")
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return fn(self._db, *args)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(LOCK_RETRY_SECONDS)

    @staticmethod
    def _transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    # -- accepting ----------------------------------------------------------------------------------------

    async def add(self, notifications: Sequence[Notification], *, idempotency: IdempotencyRecord | None = None) -> None:
        if self._writer is None or self._closing:
            # Nothing would ever write it: say so rather than wait forever.
            raise OutboxUnavailable(f"outbox {self.path}: not open")
        await self._group_commit((notifications, idempotency))

    async def _group_commit(self, write: _Write) -> None:
        """Hand `write` to the writer task; return once the transaction holding it has committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((write, future))
        self._pending_added.set()
        await future

    async def _write_pending_forever(self) -> None:
        while not (self._closing and not self._pending):
            await self._pending_added.wait()
            self._pending_added.clear()
            if self._pending:
                batch, self._pending = self._pending, []
                await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[_Write, asyncio.Future[None]]]) -> None:
        try:
            refusals = await self._run(self._write_groups, [write for write, _ in batch])
        except Exception as exc:
            if len(batch) > 1:
                # One request's rows broke the shared transaction: each request again in its own, so only the
                # one at fault hears of it.
                for entry in batch:
                    await self._write_batch([entry])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), refusal in zip(batch, refusals, strict=True):
                if future.done():
                    continue
                if refusal is None:
                    future.set_result(None)
                else:
                    future.set_exception(refusal)

    def _write_groups(self, db: sqlite3.Connection, writes: list[_Write]) -> list[Exception | None]:
        """One transaction for all: the outcomes first (what they finish frees room under the queue limit),
        then the inserts; a group refused (queue full, key taken) is skipped, the others go in."""
        now = time.time()

        def write_all(db: sqlite3.Connection) -> list[Exception | None]:
            refusals: list[Exception | None] = [None] * len(writes)
            for write in writes:
                if isinstance(write, _Outcome):
                    db.execute(write.sql, write.params)
            unsent = self._count_unsent(db) if self.queue_limit is not None else 0
            accepted: list[Notification] = []
            for number, write in enumerate(writes):
                if isinstance(write, _Outcome):
                    continue
                notifications, idempotency = write
                if self.queue_limit is not None and unsent + len(notifications) > self.queue_limit:
                    refusals[number] = QueueFull(unsent, self.queue_limit, len(notifications))
                    continue
                if idempotency is not None and not self._insert_idempotency(db, idempotency, now):
                    refusals[number] = IdempotencyKeyTaken(idempotency.key)
                    continue
                accepted.extend(notifications)
                unsent += len(notifications)
            self.insert_notifications(db, accepted)
            return refusals

        return self._transaction(db, write_all)

    @staticmethod
    def insert_notifications(
        db: sqlite3.Connection, notifications: Sequence[Notification], *, job_id: str | None = None
    ) -> None:
        """Insert new notifications (`queued`, due at once) inside the caller's transaction.

        One statement for many rows, not executemany(): sqlite3 lets go of the GIL for every step of a
        statement, and on a busy event loop each row then waited for the GIL to come back (a group of 25
        requests took 9 ms instead of well under one)."""
        for start in range(0, len(notifications), _ROWS_PER_INSERT):
            chunk = notifications[start : start + _ROWS_PER_INSERT]
            params: list[Any] = []
            for n in chunk:
                params += (
                    n.id,
                    content_json(n),
                    n.message_id,
                    n.request_id,
                    n.created_at,
                    n.created_at,
                    n.created_at,
                    job_id,
                )
            db.execute(_INSERT + ", ".join([_INSERT_ROW] * len(chunk)), params)

    @staticmethod
    def _insert_idempotency(db: sqlite3.Connection, record: IdempotencyRecord, now: float) -> bool:
        """False when the key is stored and not expired; an expired one is overwritten."""
        return (
            db.execute(
                "INSERT INTO idempotency_keys (scope, key, fingerprint, status_code, body, headers, created_at,"
                " expires_at) VALUES (:scope, :key, :fingerprint, :status_code, :body, :headers, :created_at,"
                " :expires_at)"
                " ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,"
                " status_code = excluded.status_code, body = excluded.body, headers = excluded.headers,"
                " created_at = excluded.created_at, expires_at = excluded.expires_at"
                " WHERE idempotency_keys.expires_at <= :now",
                {
                    "scope": record.scope,
                    "key": record.key,
                    "fingerprint": record.fingerprint,
                    "status_code": record.status_code,
                    "body": record.body,
                    "headers": json.dumps(record.headers),
                    "created_at": record.created_at,
                    "expires_at": record.expires_at,
                    "now": now,
                },
            ).rowcount
            == 1
        )

    # -- for the stores that share this file (the job store) -------------------------------------------

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(db)` on the outbox thread, outside any transaction (reads)."""
        return await self._run(fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(db)` in one write transaction on the outbox thread (the triggers count what it inserts)."""
        return await self._run(lambda db: self._transaction(db, fn))

    @staticmethod
    def _count_unsent(db: sqlite3.Connection) -> int:
        return int(
            db.execute(
                f"SELECT coalesce(sum(count), 0) FROM notification_counts WHERE status IN ('{QUEUED}', '{SENDING}')"
            ).fetchone()[0]
        )

    async def count_unsent(self) -> int:
        return await self._run(self._count_unsent)

    async def get_idempotency(self, scope: str, key: str, now: float) -> IdempotencyRecord | None:
        def get(db: sqlite3.Connection) -> IdempotencyRecord | None:
            row = db.execute(
                "SELECT scope, key, fingerprint, status_code, body, headers, created_at, expires_at"
                " FROM idempotency_keys WHERE scope = ? AND key = ? AND expires_at > ?",
                (scope, key, now),
            ).fetchone()
            if row is None:
                return None
            return IdempotencyRecord(
                scope=row["scope"],
                key=row["key"],
                fingerprint=row["fingerprint"],
                status_code=row["status_code"],
                body=bytes(row["body"]),
                headers=json.loads(row["headers"]),
                created_at=row["created_at"],
                expires_at=row["expires_at"],
            )

        return await self._run(get)

    async def sweep_idempotency(self, now: float) -> int:
        def sweep(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (now,)).rowcount

        return await self._run(lambda db: self._transaction(db, sweep))

    # -- reading ------------------------------------------------------------------------------------------

    async def get(self, notification_id: str) -> Notification | None:
        def get(db: sqlite3.Connection) -> Notification | None:
            row = db.execute(f"SELECT {_COLUMNS} FROM notifications WHERE id = ?", (notification_id,)).fetchone()
            return notification_from_row(row) if row else None

        return await self._run(get)

    async def page(self, *, status: str | None, limit: int, cursor: str | None) -> Page:
        before = int(cursor) if cursor else None

        def page(db: sqlite3.Connection) -> Page:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM notifications"
                " WHERE (:status IS NULL OR status = :status) AND (:before IS NULL OR seq < :before)"
                " ORDER BY seq DESC LIMIT :limit",
                {"status": status, "before": before, "limit": limit + 1},
            ).fetchall()
            items = [notification_from_row(row) for row in rows[:limit]]
            more = len(rows) > limit
            return Page(items=items, next_cursor=str(items[-1].seq) if more and items else None)

        return await self._run(page)

    async def next_due_at(self) -> float | None:
        def next_due(db: sqlite3.Connection) -> float | None:
            row = db.execute("SELECT min(next_attempt_at) FROM notifications WHERE status = 'queued'").fetchone()
            return row[0] if row else None

        return await self._run(next_due)

    # -- delivery state -----------------------------------------------------------------------------------

    async def recover(self) -> int:
        now = time.time()

        def recover(db: sqlite3.Connection) -> int:
            return self._transaction(
                db,
                lambda db: (
                    db.execute(
                        "UPDATE notifications SET status = 'queued', updated_at = ? WHERE status = 'sending'",
                        (now,),
                    ).rowcount
                ),
            )

        return await self._run(recover)

    async def claim(self, limit: int, now: float) -> list[Notification]:
        def claim(db: sqlite3.Connection) -> list[Notification]:
            rows = db.execute(
                f"UPDATE notifications SET status = '{SENDING}', attempts = attempts + 1, updated_at = :now"
                " WHERE seq IN (SELECT seq FROM notifications"
                f"   WHERE status = '{QUEUED}' AND next_attempt_at <= :now"
                "   ORDER BY next_attempt_at LIMIT :limit)"
                f" RETURNING {_COLUMNS}",
                {"now": now, "limit": limit},
            ).fetchall()
            return sorted((notification_from_row(row) for row in rows), key=lambda n: (n.next_attempt_at, n.seq or 0))

        return await self._run(lambda db: self._transaction(db, claim))

    async def release(self, notification_ids: Sequence[str]) -> None:
        now = time.time()

        def release(db: sqlite3.Connection) -> None:
            db.executemany(
                f"UPDATE notifications SET status = '{QUEUED}', attempts = attempts - 1, updated_at = ?"
                f" WHERE id = ? AND status = '{SENDING}'",
                [(now, notification_id) for notification_id in notification_ids],
            )

        await self._run(lambda db: self._transaction(db, release))

    async def _update(self, sql: str, params: dict[str, Any]) -> None:
        """An outcome, group-committed with whatever else is waiting: the eight workers of a busy dispatcher
        finish close together, and one transaction for their outcomes costs a fraction of eight."""
        if self._writer is None or self._closing:
            await self._run(lambda db: self._transaction(db, lambda db: db.execute(sql, params)))
            return
        await self._group_commit(_Outcome(sql, params))

    async def mark_sent(
        self,
        notification_id: str,
        *,
        smtp_reply: str,
        refused: list[dict[str, Any]],
        now: float,
        attempt: int | None = None,
    ) -> None:
        await self._update(
            f"UPDATE notifications SET status = '{SENT}', smtp_reply = :reply, refused = :refused,"
            f" sent_at = :now, updated_at = :now WHERE id = :id {_STILL_CLAIMED}",
            {
                "id": notification_id,
                "attempt": attempt,
                "reply": smtp_reply,
                "refused": json.dumps(refused) if refused else None,
                "now": now,
            },
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
        refused: list[dict[str, Any]] | None = None,
    ) -> None:
        await self._update(
            f"UPDATE notifications SET status = '{QUEUED}', last_error = :error,"
            " next_attempt_at = :next, updated_at = :now,"
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
                "refused": json.dumps(refused) if refused is not None else None,
            },
        )

    async def mark_failed(
        self,
        notification_id: str,
        *,
        error: str,
        refused: list[dict[str, Any]],
        now: float,
        attempt: int | None = None,
    ) -> None:
        await self._update(
            f"UPDATE notifications SET status = '{FAILED}', last_error = :error, refused = :refused,"
            f" updated_at = :now WHERE id = :id {_STILL_CLAIMED}",
            {
                "id": notification_id,
                "attempt": attempt,
                "error": error,
                "refused": json.dumps(refused) if refused else None,
                "now": now,
            },
        )

    async def requeue_failed(self, notification_id: str, now: float) -> Notification | None:
        def requeue(db: sqlite3.Connection) -> Notification | None:
            row = db.execute(
                f"UPDATE notifications SET status = '{QUEUED}', attempts = 0, next_attempt_at = :now,"
                f" updated_at = :now WHERE id = :id AND status = '{FAILED}' RETURNING {_COLUMNS}",
                {"id": notification_id, "now": now},
            ).fetchone()
            return notification_from_row(row) if row else None

        return await self._run(lambda db: self._transaction(db, requeue))

    async def check_writable(self) -> None:
        now = time.time()

        def heartbeat() -> None:
            # Its own short-lived connection on its own thread: the probe must neither queue behind the outbox's
            # thread (which may be waiting out a 30 s lock) nor wait long itself — it answers within a second.
            db = sqlite3.connect(self.path, isolation_level=None, timeout=PROBE_BUSY_TIMEOUT_MS / 1000)
            try:
                self._transaction(
                    db, lambda db: db.execute("INSERT OR REPLACE INTO heartbeat (id, at) VALUES (1, ?)", (now,))
                )
            finally:
                db.close()

        if self._db is None:
            raise OutboxUnavailable(f"outbox {self.path}: not open")
        try:
            await asyncio.to_thread(heartbeat)
        except sqlite3.Error as exc:
            raise OutboxUnavailable(f"outbox {self.path}: {exc}") from exc

    # -- the operator's view (migration 0003) ---------------------------------------------------------

    @staticmethod
    def _gauges(db: sqlite3.Connection) -> QueueGauges:
        counts = dict.fromkeys(STATUSES, 0)
        counts.update(db.execute("SELECT status, count FROM notification_counts").fetchall())
        # seq follows acceptance order, so the (status, seq) index finds the oldest queued row at once.
        row = db.execute(
            f"SELECT created_at FROM notifications WHERE status = '{QUEUED}' ORDER BY seq LIMIT 1"
        ).fetchone()
        return QueueGauges(counts=counts, oldest_queued_at=row[0] if row else None)

    async def queue_gauges(self) -> QueueGauges:
        return await self._run(self._gauges)

    async def queue_stats(self, now: float, *, minutes: int, errors: int) -> QueueStats:
        current_minute = int(now // 60)
        first_minute = current_minute - minutes + 1

        def stats(db: sqlite3.Connection) -> QueueStats:
            # One read transaction: the counts, the per-minute series and the errors are one snapshot.
            db.execute("BEGIN")
            try:
                gauges = self._gauges(db)
                sent = dict(
                    db.execute(
                        "SELECT CAST(sent_at / 60 AS INTEGER) AS minute, count(*) FROM notifications"
                        " WHERE sent_at IS NOT NULL AND sent_at >= :since GROUP BY minute",
                        {"since": first_minute * 60.0},
                    ).fetchall()
                )
                rows = db.execute(
                    "SELECT id, status, attempts, last_error, updated_at, request_id FROM notifications"
                    f" WHERE last_error IS NOT NULL AND status <> '{SENT}'"
                    " ORDER BY updated_at DESC LIMIT :limit",
                    {"limit": errors},
                ).fetchall()
            finally:
                db.execute("COMMIT")
            return QueueStats(
                gauges=gauges,
                sent_per_minute=[
                    (minute * 60.0, sent.get(minute, 0)) for minute in range(first_minute, current_minute + 1)
                ],
                recent_errors=[
                    ErrorEntry(
                        notification_id=row["id"],
                        status=row["status"],
                        attempts=row["attempts"],
                        error=row["last_error"],
                        at=row["updated_at"],
                        request_id=row["request_id"],
                    )
                    for row in rows
                ],
            )

        return await self._run(stats)
