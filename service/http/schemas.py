"""What the HTTP API answers: the status object of a notification, pages, readiness, stats and error bodies.
(What a client sends is service/intake/request.py.)"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

# The status object's shape lives beside the outbox, which writes it into webhook events too: one source.
from service.outbox.status import AttachmentStatus, HistoryItem, NotificationStatus, RefusedRecipient, StatusField

__all__ = ["AttachmentStatus", "HistoryItem", "NotificationStatus", "RefusedRecipient", "StatusField"]


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


class WebhookDelivery(BaseModel):
    id: str
    event_id: str = Field(description="The event's id, sent as the webhook-id header: the same on every attempt")
    event_type: str = Field(description="notification.sent, notification.failed, notification.delayed, job.finished")
    url: str
    status: Literal["pending", "sending", "delivered", "failed"] = Field(
        description="pending (waiting for its first or next attempt), sending, delivered (2xx), failed (given up)"
    )
    attempts: int
    last_error: str | None = Field(description="The last failed attempt's error or the receiver's reply")
    response_code: int | None = Field(description="The receiver's last HTTP status, when it answered")
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried again")
    created_at: datetime
    updated_at: datetime


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDelivery]
    next_cursor: str | None
