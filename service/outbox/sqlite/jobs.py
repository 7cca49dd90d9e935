"""The job store in the SQLite outbox's file: it runs on the file's thread, through the database's read() and
write().

One process owns the file, so every `running` job is this process's to resume.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from service.domain import Status
from service.outbox.jobs import RUNNING, Job, JobStore, JobTaken, RowError, tags_column, tags_from_column
from service.outbox.notifications import Notification
from service.outbox.sqlite.database import SqliteDatabase
from service.outbox.sqlite.notifications import insert_notifications
from service.outbox.sqlite.webhooks import write_events
from service.outbox.webhooks import job_event

_JOB_COLUMNS = (
    "id, status, template, csv_path, request_id, total_rows, rows_done, accepted, rejected, reason,"
    " created_at, finished_at, send_at, tags"
)


def _job(row: sqlite3.Row) -> Job:
    values = {key: row[key] for key in row.keys()}  # noqa: SIM118 - sqlite3.Row is not a mapping
    return Job(**{**values, "tags": tags_from_column(values["tags"])})


def _counted(db: sqlite3.Connection, job: Job) -> Job:
    """The job with its notifications counted by status (the (job_id, status) index)."""
    counts = dict(
        db.execute("SELECT status, count(*) FROM notifications WHERE job_id = ? GROUP BY status", (job.id,)).fetchall()
    )
    job.scheduled = counts.get(Status.SCHEDULED, 0)
    job.queued = counts.get(Status.QUEUED, 0) + counts.get(Status.SENDING, 0)
    job.sent = counts.get(Status.SENT, 0)
    job.failed = counts.get(Status.FAILED, 0)
    return job


def _with_errors(db: sqlite3.Connection, job_id: str, errors: int = 100) -> Job:
    """The job, counted, with its first `errors` rejected rows: what GET /v1/jobs/{id} shows."""
    job = _counted(db, _job(db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()))
    job.errors = [
        RowError(r["row"], r["email"], r["reason"])
        for r in db.execute(
            "SELECT row, email, reason FROM job_errors WHERE job_id = ? ORDER BY row LIMIT ?", (job_id, errors)
        )
    ]
    return job


class SqliteJobStore(JobStore):
    def __init__(self, database: SqliteDatabase, *, webhook_urls: Sequence[str] = ()) -> None:
        self.database = database
        self.webhook_urls = tuple(webhook_urls)

    async def create(self, job: Job) -> None:
        def create(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES"
                " (:id, :status, :template, :csv_path, :request_id, :total_rows, :rows_done, :accepted, :rejected,"
                " :reason, :created_at, :finished_at, :send_at, :tags)",
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
                    "send_at": job.send_at,
                    "tags": tags_column(job.tags),
                },
            )

        await self.database.write(create)

    async def get(self, job_id: str, *, errors: int = 100) -> Job | None:
        def get(db: sqlite3.Connection) -> Job | None:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _with_errors(db, job_id, errors)

        return await self.database.read(get)

    async def latest(self, limit: int) -> list[Job]:
        def latest(db: sqlite3.Connection) -> list[Job]:
            # No index on created_at: a job is an uploaded CSV, so the table stays small enough to sort.
            rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
            return [_counted(db, _job(row)) for row in rows.fetchall()]

        return await self.database.read(latest)

    async def running(self) -> list[Job]:
        def running(db: sqlite3.Connection) -> list[Job]:
            rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = ? ORDER BY created_at", (RUNNING,))
            return [_job(row) for row in rows]

        return await self.database.read(running)

    async def waiting(self, job_id: str) -> int:
        def waiting(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT count(*) FROM notifications WHERE job_id = ? AND status IN (?, ?)",
                (job_id, Status.QUEUED, Status.SENDING),
            ).fetchone()
            return int(row[0])

        return await self.database.read(waiting)

    async def set_total(self, job_id: str, total_rows: int) -> None:
        await self.database.write(
            lambda db: db.execute("UPDATE jobs SET total_rows = ? WHERE id = ?", (total_rows, job_id))
        )

    async def add_chunk(
        self,
        job_id: str,
        notifications: Sequence[Notification],
        errors: Sequence[RowError],
        rows_done: int,
        *,
        after_row: int | None = None,
    ) -> None:
        def add_chunk(db: sqlite3.Connection) -> None:
            if after_row is not None:
                progress = db.execute("SELECT rows_done, status FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if progress is None or tuple(progress) != (after_row, "running"):
                    raise JobTaken(job_id)
            insert_notifications(db, notifications, job_id=job_id)
            db.executemany(
                "INSERT INTO job_errors (job_id, row, email, reason) VALUES (?, ?, ?, ?)",
                [(job_id, e.row, e.email, e.reason) for e in errors],
            )
            db.execute(
                "UPDATE jobs SET rows_done = ?, accepted = accepted + ?, rejected = rejected + ? WHERE id = ?",
                (rows_done, len(notifications), len(errors), job_id),
            )

        await self.database.write(add_chunk)

    async def finish(self, job_id: str, *, status: str, reason: str | None, now: float) -> None:
        def finish(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE jobs SET status = ?, reason = ?, finished_at = ? WHERE id = ?", (status, reason, now, job_id)
            )
            if self.webhook_urls:
                # job.finished, in the finish's own transaction.
                write_events(db, [job_event(_with_errors(db, job_id), now)], self.webhook_urls)

        await self.database.write(finish)

    async def errors_after(self, job_id: str, row: int, limit: int) -> list[RowError]:
        def errors_after(db: sqlite3.Connection) -> list[RowError]:
            return [
                RowError(r["row"], r["email"], r["reason"])
                for r in db.execute(
                    "SELECT row, email, reason FROM job_errors WHERE job_id = ? AND row > ? ORDER BY row LIMIT ?",
                    (job_id, row, limit),
                )
            ]

        return await self.database.read(errors_after)
