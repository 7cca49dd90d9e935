"""The web page's only way to the outbox, the job store, the intake and the dispatcher, each reached the way the
API's routes reach them: when the intake or the stores move, this module is the one to rewire."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from fastapi import BackgroundTasks, Request
from fastapi.responses import StreamingResponse

from service.config import Settings
from service.delivery.handle import DispatcherHandle
from service.delivery.mime import addr_spec, build_message
from service.domain import Status
from service.http.routes import jobs as job_routes
from service.http.routes.notifications import cancel_notification, retry_notification
from service.intake.accept import Intake
from service.intake.csv_jobs import JobRunner
from service.intake.request import NotificationRequest
from service.intake.templates import MailTemplate, Templates
from service.outbox import Notification, NotificationStore, Page, StatsStore
from service.outbox.jobs import Job, JobStore
from service.outbox.stats import QueueStats

# The activity chart's span, in one-minute buckets.
CHART_MINUTES = 60
# How many rows one recipient search reads at most (Outbox.page_for_recipient): a few milliseconds of the
# SQLite outbox's one thread, however large the table.
SEARCH_WINDOW_ROWS = 2000


@dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str
    rcpt_to: list[str]


class Backend:
    """The service's parts as the app holds them (`app.state`), for one request of the page."""

    def __init__(self, request: Request) -> None:
        state = request.app.state
        self.settings: Settings = state.settings
        self.notifications: NotificationStore = state.outbox.notifications
        self.stats_store: StatsStore = state.outbox.stats
        self.job_store: JobStore = state.outbox.jobs
        self.dispatcher: DispatcherHandle = state.dispatcher
        self.intake: Intake = state.intake
        self.templates: Templates = state.templates
        self.job_runner: JobRunner = state.job_runner

    # -- reading -------------------------------------------------------------------------------------

    async def stats(self) -> QueueStats:
        return await self.stats_store.queue_stats(time.time(), minutes=CHART_MINUTES, errors=0)

    async def page(self, *, status: Status | None, recipient: str, limit: int, cursor: str | None) -> Page:
        if recipient:
            return await self.notifications.page_for_recipient(
                recipient=recipient, status=status, limit=limit, cursor=cursor, scan=SEARCH_WINDOW_ROWS
            )
        return await self.notifications.page(status=status, limit=limit, cursor=cursor)

    async def notification(self, notification_id: str) -> Notification | None:
        return await self.notifications.get(notification_id)

    def envelope(self, notification: Notification) -> Envelope:
        """What the SMTP server is told: MAIL FROM and every RCPT TO (Bcc included; after a partial refusal,
        the recipients left to try)."""
        recipients = notification.envelope or notification.recipients
        return Envelope(
            addr_spec(notification.sender or self.settings.MAIL_FROM), [addr_spec(address) for address in recipients]
        )

    def headers(self, notification: Notification) -> list[tuple[str, str]]:
        """The mail's top-level headers as the mailer builds them (the MIME layer's own function). Attachments as
        empty files: their bytes are not read for a page, and the top-level headers do not depend on them."""
        shape = replace(notification, attachment_data=[b""] * len(notification.attachments))
        return [
            (name, str(value))
            for name, value in build_message(shape, notification.sender or self.settings.MAIL_FROM).items()
        ]

    def mail_templates(self) -> list[MailTemplate]:
        return list(self.templates)

    async def jobs(self, limit: int) -> list[Job]:
        return await self.job_store.latest(limit)

    async def job(self, job_id: str) -> Job | None:
        return await self.job_store.get(job_id)

    async def job_errors_csv(self, job_id: str) -> StreamingResponse:
        return await job_routes.get_job_errors(job_id, self.job_store)

    # -- acting ------------------------------------------------------------------------------------------

    async def send(
        self, body: NotificationRequest, request_id: str | None, background: BackgroundTasks
    ) -> Notification:
        """Accept one notification through the intake, as POST /v1/notifications does (without an Idempotency-Key):
        rendered, checked, on disk, counted, logged, handed to the dispatcher. Raises RequestValidationError (its
        422) or QueueFull."""
        notification = self.intake.build(body, request_id)
        await self.intake.accept(notification, background)
        return notification

    async def retry(self, notification_id: str, background: BackgroundTasks) -> None:
        """POST /v1/notifications/{id}/retry itself: its 404 and 409 come out as its HTTPException."""
        await retry_notification(notification_id, self.notifications, self.dispatcher, background)

    async def cancel(self, notification_id: str) -> None:
        """POST /v1/notifications/{id}/cancel itself: its 404 and 409 come out as its HTTPException."""
        await cancel_notification(notification_id, self.notifications)

    async def start_job(self, request: Request, check_fields: job_routes.FieldsCheck) -> Job:
        """POST /v1/jobs's own upload, checks and start; `check_fields` runs before anything is stored."""
        return await job_routes.receive_job(
            request, self.settings, self.templates, self.job_store, self.job_runner, check_fields=check_fields
        )
