"""The job store: CSV mail-merge jobs, their rejected rows, and their notifications' ids in the outbox.

One interface (`JobStore`) with an implementation per outbox backend, each on the database of the notification
store, so a chunk of a job's notifications and the job's progress commit in one transaction: after a crash the
job resumes at the first row that is not in the outbox.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from service.outbox.notifications import Notification

RUNNING = "running"
DONE = "done"
JOB_FAILED = "failed"


class JobTaken(Exception):
    """Another process has moved this job on: this runner must stop (its chunk was not written)."""


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
    # Every row's notification gets these (the upload's `tags` field).
    tags: list[str] = field(default_factory=list)
    status: str = RUNNING
    total_rows: int | None = None
    # The CSV row number (the header is row 1) of the last row turned into a notification or an error.
    rows_done: int = 1
    accepted: int = 0
    rejected: int = 0
    reason: str | None = None
    finished_at: float | None = None
    # Every row's send_at (UNIX seconds): the job's notifications are scheduled together.
    send_at: float | None = None
    # The live states of the job's notifications, filled in by `get`.
    scheduled: int = 0
    queued: int = 0
    sent: int = 0
    failed: int = 0
    errors: list[RowError] = field(default_factory=list)


def tags_column(tags: Sequence[str]) -> str | None:
    """The jobs table's `tags` (migration 0008): comma-separated, which no tag contains."""
    return ",".join(tags) or None


def tags_from_column(value: str | None) -> list[str]:
    return value.split(",") if value else []


class JobStore(abc.ABC):
    @abc.abstractmethod
    async def create(self, job: Job) -> None: ...

    @abc.abstractmethod
    async def get(self, job_id: str, *, errors: int = 100) -> Job | None:
        """The job with its notifications counted by status and its first `errors` rejected rows."""

    @abc.abstractmethod
    async def latest(self, limit: int) -> list[Job]:
        """The newest `limit` jobs, newest first, their notifications counted as `get` counts them; no errors."""

    @abc.abstractmethod
    async def running(self) -> list[Job]:
        """Jobs to resume at start: unfinished, and this process's to run (see the implementations)."""

    @abc.abstractmethod
    async def waiting(self, job_id: str) -> int:
        """How many of the job's notifications are not sent or failed yet."""

    @abc.abstractmethod
    async def set_total(self, job_id: str, total_rows: int) -> None: ...

    @abc.abstractmethod
    async def add_chunk(
        self,
        job_id: str,
        notifications: Sequence[Notification],
        errors: Sequence[RowError],
        rows_done: int,
        *,
        after_row: int | None = None,
    ) -> None:
        """A chunk's notifications, its rejected rows and the job's new progress, in one transaction.

        With `after_row` (the progress the chunk starts from), the chunk goes in only while the job's progress is
        still exactly that: when another process has moved the job on (it took the job over), nothing is written
        and JobTaken is raised — so two runners of one job can never both insert a row."""

    @abc.abstractmethod
    async def finish(self, job_id: str, *, status: str, reason: str | None, now: float) -> None: ...

    @abc.abstractmethod
    async def errors_after(self, job_id: str, row: int, limit: int) -> list[RowError]:
        """Rejected rows after row number `row`, in row order: pages of the errors CSV."""

    async def close(self) -> None:
        """Let go of what the store holds beside its database (the PostgreSQL store's job locks)."""
        return None
