"""The webhook store: events written in the transaction of the change they tell about, and their deliveries (one
per event and URL) from `pending` until `delivered` or `failed`, claimed by the senders of service/events/webhooks.py.

Every method that returns has made its change durable.
"""

from __future__ import annotations

import abc
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.outbox.jobs import Job
from service.outbox.notifications import Notification
from service.outbox.status import to_job_status, to_status

# The event types (docs/events.md).
SENT = "notification.sent"
FAILED = "notification.failed"
DELAYED = "notification.delayed"
CANCELED = "notification.canceled"
JOB_FINISHED = "job.finished"

# A delivery's states.
PENDING = "pending"
SENDING = "sending"
DELIVERED = "delivered"
GIVEN_UP = "failed"
DELIVERY_STATUSES = (PENDING, SENDING, DELIVERED, GIVEN_UP)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One event as it is stored and sent: `body` is the exact JSON the receivers get (and the signature covers).
    `once` makes it unique: a second event with the same key is not written (notification.delayed, once each)."""

    id: str
    type: str
    body: str
    created_at: float
    once: str | None = None


def build_event(event_type: str, data: dict[str, Any], now: float, *, once: str | None = None) -> WebhookEvent:
    """The body every receiver gets: `{type, timestamp, data}`; `id` becomes the `webhook-id` header."""
    body = {
        "type": event_type,
        "timestamp": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    return WebhookEvent(
        id=f"evt_{uuid.uuid4().hex}",
        type=event_type,
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        created_at=now,
        once=once,
    )


def notification_event(event_type: str, notification: Notification, now: float) -> WebhookEvent:
    """An event about a notification, carrying its status object as GET /v1/notifications/{id} shows it.
    notification.delayed is written once per notification, whatever later retries there are."""
    once = f"{DELAYED}:{notification.id}" if event_type == DELAYED else None
    return build_event(event_type, to_status(notification).model_dump(mode="json"), now, once=once)


def job_event(job: Job, now: float) -> WebhookEvent:
    """job.finished, carrying the job as GET /v1/jobs/{id} shows it."""
    return build_event(JOB_FINISHED, to_job_status(job).model_dump(mode="json"), now)


@dataclass(slots=True)
class Delivery:
    """One event on its way to one URL."""

    id: str
    event_id: str
    event_type: str
    url: str
    status: str
    attempts: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    last_error: str | None = None
    response_code: int | None = None
    body: str = ""
    # Position in the table: orders listings and makes cursors.
    seq: int | None = None


# The columns delivery_from_row reads, in its order, and the join they come from: the same SQL on both backends.
DELIVERY_COLUMNS = (
    "d.seq, d.id, d.event_id, e.type, d.url, d.status, d.attempts, d.next_attempt_at, d.created_at, d.updated_at,"
    " d.last_error, d.response_code, e.body"
)
DELIVERY_FROM = "webhook_deliveries AS d JOIN webhook_events AS e ON e.id = d.event_id"
SELECT_DELIVERIES = f"SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM}"


def delivery_from_row(row: Any) -> Delivery:
    """From a row of the implementations' COLUMNS (a sqlite3.Row or an asyncpg.Record: the same names)."""
    return Delivery(
        seq=row["seq"],
        id=row["id"],
        event_id=row["event_id"],
        event_type=row["type"],
        url=row["url"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_error=row["last_error"],
        response_code=row["response_code"],
        body=row["body"],
    )


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    items: list[Delivery]
    next_cursor: str | None


class WebhookStore(abc.ABC):
    """What the webhook senders and the deliveries' routes do; the events themselves are written by the
    notification and job stores, inside their outcomes' transactions (`write_events` in the implementations)."""

    @abc.abstractmethod
    async def recover(self, now: float) -> int:
        """At start: give back what this process' senders left `sending` (on PostgreSQL: only expired leases)."""

    @abc.abstractmethod
    async def claim(self, limit: int, now: float, lease_seconds: float) -> list[Delivery]:
        """Take up to `limit` due deliveries, oldest due first: `sending` under a lease, one attempt more.
        A `sending` one whose lease ran out (a sender that died) is due again."""

    @abc.abstractmethod
    async def mark_delivered(self, delivery_id: str, *, attempt: int, response_code: int, now: float) -> bool:
        """The receiver answered 2xx. Like every outcome, it lands only while this claim (`attempt`) holds."""

    @abc.abstractmethod
    async def mark_retry(
        self,
        delivery_id: str,
        *,
        attempt: int,
        error: str,
        response_code: int | None,
        next_attempt_at: float,
        now: float,
    ) -> bool: ...

    @abc.abstractmethod
    async def mark_failed(
        self, delivery_id: str, *, attempt: int, error: str, response_code: int | None, now: float
    ) -> bool:
        """Given up after WEBHOOK_MAX_ATTEMPTS: `failed`, listed until POST …/retry sends it again."""

    @abc.abstractmethod
    async def retry(self, delivery_id: str, now: float) -> Delivery | None:
        """A `delivered` or `failed` delivery back to `pending`, due now, its attempts reset; None otherwise."""

    @abc.abstractmethod
    async def get(self, delivery_id: str) -> Delivery | None: ...

    @abc.abstractmethod
    async def page(self, *, status: str | None, limit: int, cursor: str | None) -> DeliveryPage:
        """Deliveries newest first; `cursor` is the `next_cursor` of the previous page."""

    @abc.abstractmethod
    async def oldest_waiting_at(self) -> float | None:
        """When the oldest delivery not yet delivered or given up was created; None when none waits."""

    @abc.abstractmethod
    async def next_due_at(self) -> float | None:
        """When the earliest pending delivery is due (or a lease runs out), or None when nothing waits."""


def deliveries_of(events: Sequence[WebhookEvent], urls: Sequence[str]) -> list[tuple[str, str, str]]:
    """(delivery id, event id, url) for every event and URL."""
    return [(f"dlv_{uuid.uuid4().hex}", event.id, url) for event in events for url in urls]
