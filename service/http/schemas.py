"""What the HTTP API answers: the status object of a notification, pages, readiness, stats and error bodies.
(What a client sends is service/intake/request.py.)"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, GetPydanticSchema
from pydantic_core import core_schema

from service.domain import Status


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


class NotificationPage(BaseModel):
    items: list[NotificationStatus]
    next_cursor: str | None


class Message(BaseModel):
    message: str


class ReadinessChecks(BaseModel):
    outbox: Literal["pass", "fail"]
    smtp: Literal["pass", "fail"]
    # The dispatcher runs (its process is up, when it has one); "fail" while it is restarted: mail waits.
    dispatcher: Literal["pass", "fail"] = "pass"


class CheckDetail(BaseModel):
    reason: str | None = Field(None, description="Why the check does not pass, in a few words; null when it does")


class SmtpCheckDetail(CheckDetail):
    reason: str | None = Field(
        None,
        description="null when it passes; else a few stable words: unreachable, timed out, refused the session,"
        " certificate verification failed, TLS handshake failed, STARTTLS required, STARTTLS not offered,"
        " authentication failed, closed by the server, connection failed, TLS settings unusable",
    )
    error: str | None = Field(None, description="What the server or the TLS layer said, and the setting to look at")
    tls: Literal["none", "starttls", "implicit"] = Field(description="SMTP_STARTTLS / SMTP_TLS as configured")
    verify_certs: bool = Field(description="SMTP_VERIFY_CERTS: whether the relay's certificate is checked")
    warnings: list[str] = Field(default_factory=list, description="What works but an operator should know")


class ReadinessDetails(BaseModel):
    outbox: CheckDetail
    smtp: SmtpCheckDetail
    dispatcher: CheckDetail


class Readiness(BaseModel):
    status: Literal["pass", "warn", "fail"]
    checks: ReadinessChecks
    # The last outbox schema migration applied (None while the outbox cannot be read).
    schema_version: int | None = None
    # Added beside `checks`, which keep their shape: why a check fails, and how SMTP is secured.
    details: ReadinessDetails | None = None


class StatusCounts(BaseModel):
    queued: int
    sending: int
    sent: int
    failed: int
    scheduled: int = Field(0, description="Waiting for their send_at; not counted against QUEUE_LIMIT")
    canceled: int = 0


class SentInMinute(BaseModel):
    minute: datetime = Field(description="Start of the minute (UTC); the last entry is the current minute")
    sent: int


class RecentError(BaseModel):
    id: str
    status: StatusField = Field(description="queued or sending: being retried; failed: given up")
    attempts: int
    error: str
    at: datetime
    request_id: str | None


class QueueStats(BaseModel):
    generated_at: datetime
    counts: StatusCounts
    oldest_queued_age_seconds: float | None = Field(description="null when nothing waits")
    sent_per_minute: list[SentInMinute]
    recent_errors: list[RecentError] = Field(description="Newest first")


class ErrorDetail(BaseModel):
    """The body of 401, 409, 413 and 429 answers: what went wrong and what to do."""

    detail: str


class SuppressionEntry(BaseModel):
    address: str
    source: Literal["hard_bounce", "manual"] = Field(description="A hard bounce recorded by the dispatcher, or a POST")
    reason: str = Field(description="`hard bounce`, or the reason given with the POST")
    suppressing: bool = Field(
        description="true: left out of new notifications; false: a bounce recorded while SUPPRESS_ON_HARD_BOUNCE=false"
    )
    smtp_reply: str | None = Field(description="The server's reply of the hard bounce")
    notification_id: str | None = Field(description="The notification that bounced")
    created_at: datetime


class SuppressionPage(BaseModel):
    items: list[SuppressionEntry]
    next_cursor: str | None


class SuppressionRequest(BaseModel):
    address: str = Field(description="An e-mail address (addr-spec or `Name <addr>`)")
    reason: str = Field("manual", min_length=1, max_length=500, description="Why, for whoever reads the list")
