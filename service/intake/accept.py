"""The one way in: a request, a batch item, a tutorial call or a CSV row becomes a notification here, and here
it is stored, counted, logged and handed to the dispatcher. Nothing else writes a new notification."""

from __future__ import annotations

import functools
import time
import uuid
from datetime import datetime
from typing import Any

import structlog
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.background import BackgroundTasks

from service.config import Settings
from service.delivery.handle import DispatcherHandle
from service.delivery.mime import addr_spec
from service.domain import Status
from service.events.suppressions import SuppressionList
from service.intake.attachments import decode_attachments
from service.intake.request import NotificationRequest
from service.intake.templates import TemplateRenderError, Templates
from service.metrics import Metrics
from service.outbox import IdempotencyRecord, Notification, NotificationStore
from service.outbox.jobs import JobStore, RowError

log = structlog.get_logger("service.intake")


def _error(loc: tuple[str | int, ...], kind: str, msg: str, value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


def render_request(body: NotificationRequest, templates: Templates) -> NotificationRequest:
    """A plain request (subject, text, html) from a template request, checked like any plain one; 422s name
    the missing variable or the field the rendered text broke. A plain request comes back as it is."""
    if body.template is None:
        return body
    template = templates.get(body.template)
    if template is None:
        known = ", ".join(templates.names()) or "none"
        raise RequestValidationError(
            [_error(("body", "template"), "unknown_template", f"no template {body.template!r} (known: {known})")]
        )
    try:
        rendered = template.render(body.data or {})
    except TemplateRenderError as exc:
        raise RequestValidationError(
            [_error(("body", "data"), "template_render", f"template {template.name!r}, {exc.part}: {exc.message}")]
        ) from None
    # The attachments are checked already and may be megabytes: carried over as they are, not validated again.
    fields = body.model_dump(exclude={"template", "data", "subject", "text", "html", "attachments"})
    try:
        return NotificationRequest.model_validate(
            {**fields, "subject": rendered.subject, "text": rendered.text, "html": rendered.html}
        ).model_copy(update={"attachments": body.attachments})
    except ValidationError as exc:
        raise RequestValidationError(
            [
                _error(
                    ("body", "template", *error["loc"]),
                    error["type"],
                    f"rendered from template {template.name!r}: {error['msg']}",
                )
                for error in exc.errors(include_url=False)
            ]
        ) from None


@functools.lru_cache(maxsize=8)
def message_id_domain(mail_from: str) -> str:
    """The right side of our Message-IDs: MAIL_FROM's domain. Parsing the address is ~12 µs, on every accept."""
    return addr_spec(mail_from).rpartition("@")[2] or "localhost"


def build_notification(request: NotificationRequest, settings: Settings, request_id: str | None) -> Notification:
    """A plain (rendered) request as a notification ready for the outbox: its id, Message-ID and time."""
    if request.recipient_count() > settings.MAX_RECIPIENTS:
        raise RequestValidationError(
            [
                _error(
                    ("body", "to"),
                    "too_many_recipients",
                    f"to, cc and bcc together hold {request.recipient_count()} addresses;"
                    f" at most MAX_RECIPIENTS={settings.MAX_RECIPIENTS} are allowed",
                )
            ]
        )
    assert request.subject is not None, "a template request is rendered first (render_request)"
    if request.sender is not None:
        check_sender(request.sender, settings)
    now = time.time()
    send_at = scheduled_for(request.send_at, settings, now)
    attachments, attachment_data = decode_attachments(
        request.attachments, max_count=settings.MAX_ATTACHMENTS, max_bytes=settings.MAX_ATTACHMENT_BYTES
    )
    notification_id = str(uuid.uuid4())
    domain = message_id_domain(settings.MAIL_FROM)
    return Notification(
        id=notification_id,
        sender=request.sender,
        to=request.to,
        cc=request.cc,
        bcc=request.bcc,
        reply_to=request.reply_to,
        subject=request.subject,
        text=request.text,
        html=request.html,
        metadata=request.metadata,
        headers=request.headers,
        tags=request.tags,
        attachments=attachments,
        attachment_data=attachment_data,
        message_id=f"<{notification_id}@{domain}>",
        request_id=request_id,
        created_at=now,
        next_attempt_at=now if send_at is None else send_at,
        status=Status.QUEUED if send_at is None else Status.SCHEDULED,
        send_at=send_at,
    )


def check_sender(sender: str, settings: Settings) -> None:
    """A request's `from` must be an address or at a domain of ALLOWED_FROM (default: MAIL_FROM's domain), so
    that a client cannot send as anyone; 422 naming `from` otherwise."""
    address = addr_spec(sender).lower()
    addresses, domains = settings.allowed_from()
    if address in addresses or address.rpartition("@")[2] in domains:
        return
    allowed = ", ".join(sorted(addresses | domains))
    raise RequestValidationError(
        [
            _error(
                ("body", "from"),
                "sender_not_allowed",
                f"sender domain not allowed: {address} is not in ALLOWED_FROM ({allowed});"
                " set ALLOWED_FROM to the addresses or domains this service may send from",
                sender,
            )
        ]
    )


def scheduled_for(value: datetime | None, settings: Settings, now: float) -> float | None:
    """A send_at (with its offset: request.py checks) as UNIX seconds when it is in the future, else None (sent
    at once, as Resend and SendGrid do with a past time); 422 past MAX_SCHEDULE_DAYS."""
    if value is None:
        return None
    send_at = value.timestamp()
    if send_at <= now:
        return None
    if send_at > now + settings.MAX_SCHEDULE_DAYS * 86400:
        raise RequestValidationError(
            [
                _error(
                    ("body", "send_at"),
                    "send_at_too_far",
                    f"at most MAX_SCHEDULE_DAYS={settings.MAX_SCHEDULE_DAYS:g} days ahead",
                    value.isoformat(),
                )
            ]
        )
    return send_at


class Intake:
    """Builds, stores, counts, logs and wakes: the same steps for every way a notification comes in."""

    def __init__(
        self,
        outbox: NotificationStore,
        dispatcher: DispatcherHandle,
        metrics: Metrics,
        settings: Settings,
        templates: Templates,
        suppressions: SuppressionList | None = None,
    ) -> None:
        self.outbox = outbox
        self.suppressions = suppressions
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.settings = settings
        self.templates = templates

    def build(self, body: NotificationRequest, request_id: str | None) -> Notification:
        """A request (a template one rendered first) as a notification, its suppressed recipients left out of the
        envelope; raises RequestValidationError (422), also when every recipient is suppressed."""
        notification = build_notification(render_request(body, self.templates), self.settings, request_id)
        refusal = self.narrow(notification)
        if refusal is not None:
            raise RequestValidationError([_error(("body", "to"), "suppressed", refusal[0], refusal[1])])
        return notification

    def narrow(self, notification: Notification) -> tuple[str, list[str]] | None:
        """Leave the notification's suppressed recipients out of its envelope (they are listed as refused). When
        every recipient is suppressed, nothing would be sent: the refusal's message and the addresses instead.
        The same rule for a request, a batch item and a CSV row (whose rejected row carries the message)."""
        if self.suppressions is None:
            return None
        suppressed = self.suppressions.narrow(notification)
        # Narrowed when someone is left; when nobody is, the envelope stays unset and the mail is refused.
        if suppressed and not notification.envelope:
            return (
                "every recipient is on the suppression list, so nothing would be sent: "
                + ", ".join(suppressed)
                + " (DELETE /v1/suppressions/{address} lifts one)",
                suppressed,
            )
        return None

    async def accept(
        self,
        notification: Notification,
        after_response: BackgroundTasks,
        *,
        idempotency: IdempotencyRecord | None = None,
    ) -> None:
        """On disk first (with its Idempotency-Key's record, if any, in the same transaction), then (after the
        response is sent) a hand-off to the dispatcher."""
        await self.outbox.add([notification], idempotency=idempotency)
        self.metrics.notifications_accepted.inc()
        # The id as the event's own key rather than bound to the context around it: the same keys, without a
        # context manager and two context-variable changes per accept.
        log.info("notification_accepted", notification_id=notification.id, recipients=len(notification.recipients))
        after_response.add_task(self.dispatcher.notify, notification.id)

    async def accept_batch(
        self,
        notifications: list[Notification],
        after_response: BackgroundTasks,
        *,
        rejected: int,
        idempotency: IdempotencyRecord | None = None,
    ) -> None:
        """A batch's valid items in one transaction (with the key's record) and one wake-up; `rejected` items
        were refused one by one before, and only counted in the log line here."""
        if notifications:
            await self.outbox.add(notifications, idempotency=idempotency)
            self.metrics.notifications_accepted.inc(len(notifications))
            for notification in notifications:
                log.info(
                    "notification_accepted",
                    notification_id=notification.id,
                    recipients=len(notification.recipients),
                    batch=True,
                )
            after_response.add_task(self.dispatcher.notify, notifications[0].id)
        log.info("batch_accepted", accepted=len(notifications), rejected=rejected)

    async def accept_job_chunk(
        self,
        jobs: JobStore,
        job_id: str,
        notifications: list[Notification],
        errors: list[RowError],
        last_row: int,
        *,
        after_row: int,
    ) -> None:
        """A CSV job's chunk: its notifications, rejected rows and progress in one transaction of the job store.
        No line per notification: the job logs its progress per chunk (a 100,000-row CSV is not 100,000 lines)."""
        await jobs.add_chunk(job_id, notifications, errors, last_row, after_row=after_row)
        if notifications:
            self.metrics.notifications_accepted.inc(len(notifications))
            self.dispatcher.wake()
