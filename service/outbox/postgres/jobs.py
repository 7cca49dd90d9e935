"""The job store in the PostgreSQL outbox's database, shared by every replica.

A job's CSV is on the disk of the replica that took the upload, and only one replica may turn it into mail:
the replica running a job holds a session advisory lock on it, on a connection of the store's own. At start a
replica resumes only the `running` jobs whose file it has and whose lock it gets; when a replica dies its
connection goes and with it the lock, so the next replica to start with that file resumes the job.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from service.domain import Status
from service.outbox.errors import OutboxUnavailable
from service.outbox.jobs import RUNNING, Job, JobStore, JobTaken, RowError, tags_column, tags_from_column
from service.outbox.notifications import Notification
from service.outbox.postgres.database import PostgresDatabase, redact
from service.outbox.postgres.notifications import insert_notifications
from service.outbox.postgres.webhooks import write_events
from service.outbox.webhooks import job_event

# The first half of a job lock's key (pg_advisory_lock(int, int)); the second is hashtext(job id).
JOB_LOCK_CLASS = 0x6A6F62  # "job"

_JOB_COLUMNS = (
    "id, status, template, csv_path, request_id, total_rows, rows_done, accepted, rejected, reason,"
    " created_at, finished_at, send_at, tags"
)


def _job(row: asyncpg.Record) -> Job:
    values = dict(row.items())
    return Job(**{**values, "tags": tags_from_column(values["tags"])})


async def _counted(conn: asyncpg.Connection, job: Job) -> Job:
    """The job with its notifications counted by status (the (job_id, status) index)."""
    counts = {
        r["status"]: r["count"]
        for r in await conn.fetch(
            "SELECT status, count(*) AS count FROM notifications WHERE job_id = $1 GROUP BY status", job.id
        )
    }
    job.scheduled = counts.get(Status.SCHEDULED, 0)
    job.queued = counts.get(Status.QUEUED, 0) + counts.get(Status.SENDING, 0)
    job.sent = counts.get(Status.SENT, 0)
    job.failed = counts.get(Status.FAILED, 0)
    return job


async def _with_errors(conn: asyncpg.Connection, job_id: str, errors: int = 100) -> Job:
    """The job, counted, with its first `errors` rejected rows: what GET /v1/jobs/{id} shows."""
    job = await _counted(conn, _job(await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)))
    error_rows = await conn.fetch(
        "SELECT row, email, reason FROM job_errors WHERE job_id = $1 ORDER BY row LIMIT $2", job_id, errors
    )
    job.errors = [RowError(r["row"], r["email"], r["reason"]) for r in error_rows]
    return job


class PostgresJobStore(JobStore):
    def __init__(self, database: PostgresDatabase, *, webhook_urls: Sequence[str] = ()) -> None:
        self.database = database
        self.webhook_urls = tuple(webhook_urls)
        # Holds the advisory locks of the jobs this replica runs; they last as long as this connection.
        self._locks: asyncpg.Connection | None = None
        self._locks_guard = asyncio.Lock()
        # The jobs whose lock this replica holds (a session may take its own advisory lock again: we don't).
        self._held: set[str] = set()

    async def _lock(self, job_id: str) -> bool:
        """Take the job for this replica; False when another live replica runs it."""
        async with self._locks_guard:
            if self._locks is None or self._locks.is_closed():
                self._held.clear()
            elif job_id in self._held:
                return False
            try:
                if self._locks is None or self._locks.is_closed():
                    self._locks = await asyncpg.connect(self.database.url)
                taken = await self._locks.fetchval(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))", JOB_LOCK_CLASS, job_id
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                raise OutboxUnavailable(f"outbox {redact(self.database.url)}: {exc}") from exc
            if taken:
                self._held.add(job_id)
            return bool(taken)

    async def _unlock(self, job_id: str) -> None:
        async with self._locks_guard:
            self._held.discard(job_id)
            # When the connection is gone, the lock went with it.
            if self._locks is not None and not self._locks.is_closed():
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await self._locks.execute("SELECT pg_advisory_unlock($1, hashtext($2))", JOB_LOCK_CLASS, job_id)

    async def close(self) -> None:
        async with self._locks_guard:
            self._held.clear()
            if self._locks is not None:
                await self._locks.close()
                self._locks = None

    async def create(self, job: Job) -> None:
        async with self.database.connection() as conn:
            await conn.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                job.id,
                job.status,
                job.template,
                job.csv_path,
                job.request_id,
                job.total_rows,
                job.rows_done,
                job.accepted,
                job.rejected,
                job.reason,
                job.created_at,
                job.finished_at,
                job.send_at,
                tags_column(job.tags),
            )
        await self._lock(job.id)

    async def get(self, job_id: str, *, errors: int = 100) -> Job | None:
        async with self.database.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
            if row is None:
                return None
            return await _with_errors(conn, job_id, errors)

    async def latest(self, limit: int) -> list[Job]:
        async with self.database.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # No index on created_at: a job is an uploaded CSV, so the table stays small enough to sort.
            rows = await conn.fetch(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT $1", limit)
            return [await _counted(conn, _job(row)) for row in rows]

    async def running(self) -> list[Job]:
        async with self.database.connection() as conn:
            rows = await conn.fetch(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = $1 ORDER BY created_at", RUNNING)
        mine = []
        for job in map(_job, rows):
            # Another replica's upload (not on this disk) is left to that replica.
            if await asyncio.to_thread(Path(job.csv_path).exists) and await self._lock(job.id):
                mine.append(job)
        return mine

    async def waiting(self, job_id: str) -> int:
        async with self.database.connection() as conn:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM notifications WHERE job_id = $1 AND status IN ($2, $3)",
                    job_id,
                    Status.QUEUED,
                    Status.SENDING,
                )
            )

    async def set_total(self, job_id: str, total_rows: int) -> None:
        async with self.database.connection() as conn:
            await conn.execute("UPDATE jobs SET total_rows = $1 WHERE id = $2", total_rows, job_id)

    async def add_chunk(
        self,
        job_id: str,
        notifications: Sequence[Notification],
        errors: Sequence[RowError],
        rows_done: int,
        *,
        after_row: int | None = None,
    ) -> None:
        async with self.database.connection() as conn, conn.transaction():
            if after_row is not None:
                # The row lock taken here also orders two runners racing for the same chunk: the second waits,
                # then sees the first one's progress and writes nothing. (The advisory lock that keeps a job on
                # one replica is on another connection and can be lost with it; this check cannot.)
                progress = await conn.fetchrow("SELECT rows_done, status FROM jobs WHERE id = $1 FOR UPDATE", job_id)
                if progress is None or (progress["rows_done"], progress["status"]) != (after_row, "running"):
                    raise JobTaken(job_id)
            if notifications:
                await insert_notifications(conn, notifications, job_id=job_id)
            if errors:
                await conn.executemany(
                    "INSERT INTO job_errors (job_id, row, email, reason) VALUES ($1, $2, $3, $4)",
                    [(job_id, e.row, e.email, e.reason) for e in errors],
                )
            await conn.execute(
                "UPDATE jobs SET rows_done = $1, accepted = accepted + $2, rejected = rejected + $3 WHERE id = $4",
                rows_done,
                len(notifications),
                len(errors),
                job_id,
            )

    async def finish(self, job_id: str, *, status: str, reason: str | None, now: float) -> None:
        async with self.database.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE jobs SET status = $1, reason = $2, finished_at = $3 WHERE id = $4", status, reason, now, job_id
            )
            if self.webhook_urls:
                # job.finished, in the finish's own transaction.
                await write_events(conn, [job_event(await _with_errors(conn, job_id), now)], self.webhook_urls)
        await self._unlock(job_id)

    async def errors_after(self, job_id: str, row: int, limit: int) -> list[RowError]:
        async with self.database.connection() as conn:
            rows = await conn.fetch(
                "SELECT row, email, reason FROM job_errors WHERE job_id = $1 AND row > $2 ORDER BY row LIMIT $3",
                job_id,
                row,
                limit,
            )
        return [RowError(r["row"], r["email"], r["reason"]) for r in rows]
