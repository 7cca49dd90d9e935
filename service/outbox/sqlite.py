"""The SQLite outbox: one file in WAL mode, one connection owned by one thread.

sqlite3 blocks, so every statement runs on a single dedicated thread, never on the event loop. Inserts are
group-committed: the requests that arrive while a commit is on disk are written together in the next
transaction, and each request is answered only after the transaction holding its row has committed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from service.outbox import (
    FAILED,
    QUEUED,
    SENDING,
    SENT,
    Notification,
    Outbox,
    OutboxUnavailable,
    Page,
)

T = TypeVar("T")

# How long a statement waits for another connection's write lock before it fails.
BUSY_TIMEOUT_MS = 30_000
PROBE_BUSY_TIMEOUT_MS = 1_000

_COLUMNS = (
    "seq, id, status, content, message_id, request_id, attempts, last_error, smtp_reply, refused,"
    " created_at, updated_at, sent_at, next_attempt_at"
)


# With an `attempt`, an outcome only lands while the row is still that claim's (see Outbox.mark_sent).
_STILL_CLAIMED = f"AND (:attempt IS NULL OR (status = '{SENDING}' AND attempts = :attempt))"


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("service.outbox") / "migrations" / "sqlite"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def _content(n: Notification) -> str:
    return json.dumps(
        {
            "to": n.to,
            "cc": n.cc,
            "bcc": n.bcc,
            "reply_to": n.reply_to,
            "subject": n.subject,
            "text": n.text,
            "html": n.html,
            "metadata": n.metadata,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _from_row(row: sqlite3.Row) -> Notification:
    content = json.loads(row["content"])
    return Notification(
        seq=row["seq"],
        id=row["id"],
        status=row["status"],
        to=content["to"],
        cc=content["cc"],
        bcc=content["bcc"],
        reply_to=content["reply_to"],
        subject=content["subject"],
        text=content["text"],
        html=content["html"],
        metadata=content["metadata"],
        message_id=row["message_id"],
        request_id=row["request_id"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        smtp_reply=row["smtp_reply"],
        refused_recipients=json.loads(row["refused"]) if row["refused"] else [],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sent_at=row["sent_at"],
        next_attempt_at=row["next_attempt_at"],
    )


class SqliteOutbox(Outbox):
    def __init__(self, path: Path | str, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._pending: list[tuple[Sequence[Notification], asyncio.Future[None]]] = []
        self._pending_added = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._connect)
        except sqlite3.Error as exc:
            raise OutboxUnavailable(f"outbox {self.path}: {exc}") from exc
        self._writer = asyncio.create_task(self._write_pending_forever(), name="outbox-writer")

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly what we say.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in _migrations():
                if number > version:
                    for statement in script.split(";\n"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version={number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._db = db

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
        if self._db is None:
            raise sqlite3.ProgrammingError("the outbox is not open")
        return fn(self._db, *args)

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

    async def add(self, notifications: Sequence[Notification]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((notifications, future))
        self._pending_added.set()
        await future

    async def _write_pending_forever(self) -> None:
        while not (self._closing and not self._pending):
            await self._pending_added.wait()
            self._pending_added.clear()
            if self._pending:
                await self._write_batch()

    async def _write_batch(self) -> None:
        batch, self._pending = self._pending, []
        try:
            await self._run(self._insert_groups, [group for group, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _insert_groups(self, db: sqlite3.Connection, groups: list[Sequence[Notification]]) -> None:
        def insert_all(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO notifications (id, status, content, message_id, request_id, attempts,"
                " created_at, updated_at, next_attempt_at) VALUES (?, 'queued', ?, ?, ?, 0, ?, ?, ?)",
                [
                    (n.id, _content(n), n.message_id, n.request_id, n.created_at, n.created_at, n.created_at)
                    for group in groups
                    for n in group
                ],
            )

        self._transaction(db, insert_all)

    # -- reading ------------------------------------------------------------------------------------------

    async def get(self, notification_id: str) -> Notification | None:
        def get(db: sqlite3.Connection) -> Notification | None:
            row = db.execute(f"SELECT {_COLUMNS} FROM notifications WHERE id = ?", (notification_id,)).fetchone()
            return _from_row(row) if row else None

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
            items = [_from_row(row) for row in rows[:limit]]
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
            return sorted((_from_row(row) for row in rows), key=lambda n: (n.next_attempt_at, n.seq or 0))

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
        await self._run(lambda db: self._transaction(db, lambda db: db.execute(sql, params)))

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
        self, notification_id: str, *, error: str, next_attempt_at: float, now: float, attempt: int | None = None
    ) -> None:
        await self._update(
            f"UPDATE notifications SET status = '{QUEUED}', last_error = :error,"
            f" next_attempt_at = :next, updated_at = :now WHERE id = :id {_STILL_CLAIMED}",
            {"id": notification_id, "attempt": attempt, "error": error, "next": next_attempt_at, "now": now},
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
            return _from_row(row) if row else None

        return await self._run(lambda db: self._transaction(db, requeue))

    async def check_writable(self) -> None:
        now = time.time()

        def heartbeat(db: sqlite3.Connection) -> None:
            # A probe answers within a second or says no: it must not wait out the 30 s lock timeout.
            db.execute(f"PRAGMA busy_timeout = {PROBE_BUSY_TIMEOUT_MS}")
            try:
                self._transaction(
                    db,
                    lambda db: db.execute("INSERT OR REPLACE INTO heartbeat (id, at) VALUES (1, ?)", (now,)),
                )
            finally:
                db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

        await self._run(heartbeat)
