"""The job store: CSV mail-merge jobs, their rejected rows, and their notifications' ids in the outbox.

It shares the outbox's SQLite connection and thread, so a chunk of a job's notifications and the job's progress
commit in one transaction: after a crash the job resumes at the first row that is not in the outbox.
"""

from __future__ import annotations

import abc
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

from service.outbox import FAILED, QUEUED, SENDING, SENT, Notification, Outbox
from service.outbox.sqlite import SqliteOutbox, _content

RUNNING = "running"
DONE = "done"
JOB_FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    email: str | None
    reason: str


@dataclass(slots=True)
class Job:
    id: str
    template: str
    csv_path: str
    created_at: float
    request_id: str | None = None
    status: str = RUNNING
    total_rows: int | None = None
    # The CSV row number (the header is row 1) of the last row turned into a notification or an error.
    rows_done: int = 1
    accepted: int = 0
    rejected: int = 0
    reason: str | None = None
    finished_at: float | None = None
    # The live states of the job's notifications, filled in by `get`.
    queued: int = 0
    sent: int = 0
    failed: int = 0
    errors: list[RowError] = field(default_factory=list)


class JobStore(abc.ABC):
    @abc.abstractmethod
    async def create(self, job: Job) -> None: ...

    @abc.abstractmethod
    async def get(self, job_id: str, *, errors: int = 100) -> Job | None:
        """The job with its notifications counted by status and its first `errors` rejected rows."""

    @abc.abstractmethod
    async def running(self) -> list[Job]:
        """Jobs to resume at start."""

    @abc.abstractmethod
    async def waiting(self, job_id: str) -> int:
        """How many of the job's notifications are not sent or failed yet."""

    @abc.abstractmethod
    async def set_total(self, job_id: str, total_rows: int) -> None: ...

    @abc.abstractmethod
    async def add_chunk(
        self, job_id: str, notifications: Sequence[Notification], errors: Sequence[RowError], rows_done: int
    ) -> None:
        """A chunk's notifications, its rejected rows and the job's new progress, in one transaction."""

    @abc.abstractmethod
    async def finish(self, job_id: str, *, status: str, reason: str | None, now: float) -> None: ...

    @abc.abstractmethod
    async def errors_after(self, job_id: str, row: int, limit: int) -> list[RowError]:
        """Rejected rows after row number `row`, in row order: pages of the errors CSV."""


def open_job_store(outbox: Outbox) -> JobStore:
    if not isinstance(outbox, SqliteOutbox):
        raise TypeError(f"no job store for {type(outbox).__name__}")
    return SqliteJobStore(outbox)


_JOB_COLUMNS = (
    "id, status, template, csv_path, request_id, total_rows, rows_done, accepted, rejected, reason,"
    " created_at, finished_at"
)


def _job(row: sqlite3.Row) -> Job:
    return Job(**{key: row[key] for key in row.keys()})  # noqa: SIM118 - sqlite3.Row is not a mapping


class SqliteJobStore(JobStore):
    def __init__(self, outbox: SqliteOutbox) -> None:
        self.outbox = outbox

    async def create(self, job: Job) -> None:
        def create(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES"
                " (:id, :status, :template, :csv_path, :request_id, :total_rows, :rows_done, :accepted, :rejected,"
                " :reason, :created_at, :finished_at)",
                {
                    "id": job.id,
                    "status": job.status,
                    "template": job.template,
                    "csv_path": job.csv_path,
                    "request_id": job.request_id,
                    "total_rows": job.total_rows,
                    "rows_done": job.rows_done,
                    "accepted": job.accepted,
                    "rejected": job.rejected,
                    "reason": job.reason,
                    "created_at": job.created_at,
                    "finished_at": job.finished_at,
                },
            )

        await self.outbox._run(lambda db: self.outbox._transaction(db, create))

    async def get(self, job_id: str, *, errors: int = 100) -> Job | None:
        def get(db: sqlite3.Connection) -> Job | None:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            job = _job(row)
            counts = dict(
                db.execute(
                    "SELECT status, count(*) FROM notifications WHERE job_id = ? GROUP BY status", (job_id,)
                ).fetchall()
            )
            job.queued = counts.get(QUEUED, 0) + counts.get(SENDING, 0)
            job.sent = counts.get(SENT, 0)
            job.failed = counts.get(FAILED, 0)
            job.errors = [
                RowError(r["row"], r["email"], r["reason"])
                for r in db.execute(
                    "SELECT row, email, reason FROM job_errors WHERE job_id = ? ORDER BY row LIMIT ?", (job_id, errors)
                )
            ]
            return job

        return await self.outbox._run(get)

    async def running(self) -> list[Job]:
        def running(db: sqlite3.Connection) -> list[Job]:
            rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = ? ORDER BY created_at", (RUNNING,))
            return [_job(row) for row in rows]

        return await self.outbox._run(running)

    async def waiting(self, job_id: str) -> int:
        def waiting(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT count(*) FROM notifications WHERE job_id = ? AND status IN (?, ?)", (job_id, QUEUED, SENDING)
            ).fetchone()
            return int(row[0])

        return await self.outbox._run(waiting)

    async def set_total(self, job_id: str, total_rows: int) -> None:
        await self.outbox._run(
            lambda db: self.outbox._transaction(
                db, lambda db: db.execute("UPDATE jobs SET total_rows = ? WHERE id = ?", (total_rows, job_id))
            )
        )

    async def add_chunk(
        self, job_id: str, notifications: Sequence[Notification], errors: Sequence[RowError], rows_done: int
    ) -> None:
        def add_chunk(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO notifications (id, status, content, message_id, request_id, attempts,"
                " created_at, updated_at, next_attempt_at, job_id) VALUES (?, 'queued', ?, ?, ?, 0, ?, ?, ?, ?)",
                [
                    (n.id, _content(n), n.message_id, n.request_id, n.created_at, n.created_at, n.created_at, job_id)
                    for n in notifications
                ],
            )
            db.executemany(
                "INSERT INTO job_errors (job_id, row, email, reason) VALUES (?, ?, ?, ?)",
                [(job_id, e.row, e.email, e.reason) for e in errors],
            )
            db.execute(
                "UPDATE jobs SET rows_done = ?, accepted = accepted + ?, rejected = rejected + ? WHERE id = ?",
                (rows_done, len(notifications), len(errors), job_id),
            )

        await self.outbox._run(lambda db: self.outbox._transaction(db, add_chunk))

    async def finish(self, job_id: str, *, status: str, reason: str | None, now: float) -> None:
        await self.outbox._run(
            lambda db: self.outbox._transaction(
                db,
                lambda db: db.execute(
                    "UPDATE jobs SET status = ?, reason = ?, finished_at = ? WHERE id = ?",
                    (status, reason, now, job_id),
                ),
            )
        )

    async def errors_after(self, job_id: str, row: int, limit: int) -> list[RowError]:
        def errors_after(db: sqlite3.Connection) -> list[RowError]:
            return [
                RowError(r["row"], r["email"], r["reason"])
                for r in db.execute(
                    "SELECT row, email, reason FROM job_errors WHERE job_id = ? AND row > ? ORDER BY row LIMIT ?",
                    (job_id, row, limit),
                )
            ]

        return await self.outbox._run(errors_after)
