"""The status objects: a notification as GET /v1/notifications/{id} shows it (a job as GET /v1/jobs/{id}), and as
a webhook event carries it.

One shape for both, built here from the stored notification: the HTTP layer answers with it (service/http/
schemas.py re-exports it), the outbox writes it into an event in the outcome's own transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetPydanticSchema
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
    outcome: Literal["sent", "retry", "failed", "interrupted", "recovered", "requeued", "canceled"] = Field(
        description="sent, retry (failed for now, tried again), failed (the last word), interrupted (by shutdown),"
        " recovered (left sending by a process that stopped), requeued (by POST …/retry),"
        " canceled (by POST …/cancel): docs/api.md"
    )
    smtp_code: int | None = Field(description="The SMTP server's reply code, when it gave one")
    message: str | None = Field(description="The server's reply, or the error")


class AttachmentStatus(BaseModel):
    filename: str
    content_type: str
    content_id: str | None = Field(description="Set for an inline attachment, which html shows as `cid:<content_id>`")
    size: int = Field(description="Its decoded size in bytes (the content itself is never echoed)")


class NotificationStatus(BaseModel):
    # `from` is a Python keyword: the attribute is `sender`, and every dump (the API, the OpenAPI, webhook
    # events) says "from".
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    id: str
    status: StatusField
    sender: str | None = Field(
        None,
        alias="from",
        description="The request's `from`, as the mail's From carries it; null when it named none and the mail"
        " goes out from the service's MAIL_FROM",
    )
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
    send_at: datetime | None = Field(
        None, description="When a scheduled notification is to be sent (its `send_at`); null when sent at once"
    )
    message_id: str
    smtp_reply: str | None
    refused_recipients: list[RefusedRecipient]
    request_id: str | None
    metadata: dict[str, str]
    headers: dict[str, str] = Field(
        default_factory=dict, description="The request's own headers, as the mail carries them (docs/api.md#headers)"
    )
    tags: list[str] = Field(default_factory=list, description="The request's tags: `GET /v1/notifications?tag=`")
    history: list[HistoryItem] = Field(
        default_factory=list, description="Every attempt's outcome, oldest first; the newest 50 are kept"
    )
    attachments: list[AttachmentStatus] = Field(default_factory=list, description="What was attached, without content")


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def to_status(n: Notification) -> NotificationStatus:
    return NotificationStatus(
        id=n.id,
        status=n.status,
        sender=n.sender,
        to=n.to,
        cc=n.cc,
        bcc=n.bcc,
        subject=n.subject,
        attempts=n.attempts,
        last_error=n.last_error,
        created_at=datetime.fromtimestamp(n.created_at, UTC),
        updated_at=datetime.fromtimestamp(n.updated_at or n.created_at, UTC),
        sent_at=_time(n.sent_at),
        next_attempt_at=_time(n.next_attempt_at) if n.status in (Status.QUEUED, Status.SCHEDULED) else None,
        send_at=_time(n.send_at),
        message_id=n.message_id,
        smtp_reply=n.smtp_reply,
        refused_recipients=[RefusedRecipient(**r.to_json()) for r in n.refused_recipients],
        request_id=n.request_id,
        metadata=n.metadata,
        headers=n.headers,
        tags=n.tags,
        history=[
            HistoryItem(
                at=datetime.fromtimestamp(h.at, UTC), outcome=h.outcome, smtp_code=h.smtp_code, message=h.message
            )
            for h in n.history
        ],
        attachments=[AttachmentStatus(**a.to_json()) for a in n.attachments],
    )


class JobRowError(BaseModel):
    row: int
    reason: str


class JobStatus(BaseModel):
    id: str
    status: str
    template: str
    tags: list[str] = Field(default_factory=list, description="Every row's notification carries these tags")
    total_rows: int | None
    rows_done: int
    accepted: int
    rejected: int
    send_at: datetime | None = Field(None, description="When the job's notifications are to be sent, if scheduled")
    scheduled: int = Field(0, description="Notifications waiting for the job's send_at")
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
        tags=job.tags,
        total_rows=job.total_rows,
        rows_done=job.rows_done,
        accepted=job.accepted,
        rejected=job.rejected,
        send_at=None if job.send_at is None else datetime.fromtimestamp(job.send_at, UTC),
        scheduled=job.scheduled,
        queued=job.queued,
        sent=job.sent,
        failed=job.failed,
        errors=[JobRowError(row=e.row, reason=e.reason) for e in job.errors],
        reason=job.reason,
        created_at=datetime.fromtimestamp(job.created_at, UTC),
        finished_at=None if job.finished_at is None else datetime.fromtimestamp(job.finished_at, UTC),
    )
