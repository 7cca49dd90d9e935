"""The status objects: a notification as GET /v1/notifications/{id} shows it (a job as GET /v1/jobs/{id}), and as
a webhook event carries it.

One shape for both, built here from the stored notification: the HTTP layer answers with it (service/http/
schemas.py re-exports it), the outbox writes it into an event in the outcome's own transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, GetPydanticSchema
from pydantic_core import core_schema

from service.domain import Status
from service.outbox.jobs import Job
from service.outbox.notifications import Notification


def _status_schema(_source: Any, _handler: Any) -> core_schema.CoreSchema:
    return core_schema.no_info_after_validator_function(
        Status, core_schema.literal_schema([status.value for status in Status])
    )


# The domain's Status as the API shows it: one of its strings, described inline in the OpenAPI document as it
# always was (annotated as the Enum, FastAPI would add a shared component: a new type in every generated client).
StatusField = Annotated[str, GetPydanticSchema(_status_schema)]


class RefusedRecipient(BaseModel):
    address: str
    code: int
    message: str


class HistoryItem(BaseModel):
    at: datetime
    outcome: Literal["sent", "retry", "failed", "interrupted", "recovered", "requeued"] = Field(
        description="sent, retry (failed for now, tried again), failed (the last word), interrupted (by shutdown),"
        " recovered (left sending by a process that stopped), requeued (by POST …/retry): docs/api.md"
    )
    smtp_code: int | None = Field(description="The SMTP server's reply code, when it gave one")
    message: str | None = Field(description="The server's reply, or the error")


class NotificationStatus(BaseModel):
    id: str
    status: StatusField
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str
    attempts: int
    last_error: str | None = Field(description="The last error seen; it stays after a later success (see history)")
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None
    message_id: str
    smtp_reply: str | None
    refused_recipients: list[RefusedRecipient]
    request_id: str | None
    metadata: dict[str, str]
    history: list[HistoryItem] = Field(
        default_factory=list, description="Every attempt's outcome, oldest first; the newest 50 are kept"
    )


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def to_status(n: Notification) -> NotificationStatus:
    return NotificationStatus(
        id=n.id,
        status=n.status,
        to=n.to,
        cc=n.cc,
        bcc=n.bcc,
        subject=n.subject,
        attempts=n.attempts,
        last_error=n.last_error,
        created_at=datetime.fromtimestamp(n.created_at, UTC),
        updated_at=datetime.fromtimestamp(n.updated_at or n.created_at, UTC),
        sent_at=_time(n.sent_at),
        next_attempt_at=_time(n.next_attempt_at) if n.status == Status.QUEUED else None,
        message_id=n.message_id,
        smtp_reply=n.smtp_reply,
        refused_recipients=[RefusedRecipient(**r.to_json()) for r in n.refused_recipients],
        request_id=n.request_id,
        metadata=n.metadata,
        history=[
            HistoryItem(
                at=datetime.fromtimestamp(h.at, UTC), outcome=h.outcome, smtp_code=h.smtp_code, message=h.message
            )
            for h in n.history
        ],
    )


class JobRowError(BaseModel):
    row: int
    reason: str


class JobStatus(BaseModel):
    id: str
    status: str
    template: str
    total_rows: int | None
    rows_done: int
    accepted: int
    rejected: int
    queued: int
    sent: int
    failed: int
    errors: list[JobRowError]
    reason: str | None
    created_at: datetime
    finished_at: datetime | None


def to_job_status(job: Job) -> JobStatus:
    return JobStatus(
        id=job.id,
        status=job.status,
        template=job.template,
        total_rows=job.total_rows,
        rows_done=job.rows_done,
        accepted=job.accepted,
        rejected=job.rejected,
        queued=job.queued,
        sent=job.sent,
        failed=job.failed,
        errors=[JobRowError(row=e.row, reason=e.reason) for e in job.errors],
        reason=job.reason,
        created_at=datetime.fromtimestamp(job.created_at, UTC),
        finished_at=None if job.finished_at is None else datetime.fromtimestamp(job.finished_at, UTC),
    )
