"""The app: `create_app()` wires routes, logging, and the lifespan that opens the outbox and runs
the dispatcher.

Run it with `uvicorn service.main:app`.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import structlog
from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError

from service.config import Settings, load_settings
from service.delivery.dispatcher import Dispatcher
from service.delivery.dkim import check_dkim_or_exit
from service.delivery.probe import SmtpProbe
from service.delivery.process import DispatcherProcess
from service.events.suppressions import SuppressionList
from service.events.webhooks import WebhookSender
from service.http import errors, ui
from service.http.auth import UNAUTHORIZED_RESPONSE, require_api_key
from service.http.compat import postmark, resend
from service.http.compat.common import body_limit_error
from service.http.idempotency import Idempotency
from service.http.limits import LIMIT_RESPONSES, BodyLimitMiddleware, outbox_unavailable_handler, queue_full_handler
from service.http.middleware import HttpMetricsMiddleware, RequestIdMiddleware
from service.http.routes import (
    batch,
    health,
    jobs,
    metrics,
    notifications,
    stats,
    suppressions,
    templates,
    tutorial,
    webhooks,
)
from service.http.ui.throttle import LoginThrottle
from service.intake.accept import Intake
from service.intake.csv_jobs import JobRunner
from service.intake.templates import load_templates_or_exit
from service.logging import configure_logging
from service.metrics import Metrics
from service.outbox import OutboxUnavailable, QueueFull, describe_outbox, open_outbox

log = structlog.get_logger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings)
    app_metrics = Metrics(settings.metric_tags())
    mail_templates = load_templates_or_exit(settings.TEMPLATES_DIR)
    check_dkim_or_exit(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        outbox = open_outbox(settings)
        await outbox.open()
        dispatcher: Dispatcher | DispatcherProcess
        if settings.DISPATCHER_PROCESS:
            dispatcher = DispatcherProcess(outbox, settings, metrics=app_metrics)
        else:
            dispatcher = Dispatcher(outbox.notifications, settings, metrics=app_metrics)
        app.state.outbox = outbox
        app.state.dispatcher = dispatcher
        app_metrics.watch_dispatcher(lambda: dispatcher.running)
        app.state.smtp_probe = SmtpProbe(settings)
        idempotency = Idempotency(outbox.idempotency, settings.IDEMPOTENCY_TTL_HOURS * 3600)
        app.state.idempotency = idempotency
        sweeper = asyncio.create_task(idempotency.sweep_expired_forever(), name="idempotency-sweeper")
        suppression_list = SuppressionList(outbox.suppressions, refresh_seconds=settings.SUPPRESSION_REFRESH_SECONDS)
        await suppression_list.refresh()
        app.state.suppressions = suppression_list
        refresher = asyncio.create_task(suppression_list.refresh_forever(), name="suppressions-refresher")
        await dispatcher.start()
        # Webhooks go from this process (the HTTP one), whichever process wrote their events: the outbox is shared.
        webhook_sender = WebhookSender(outbox.webhooks, settings, app_metrics) if settings.webhook_urls() else None
        app.state.webhook_sender = webhook_sender
        if webhook_sender is not None:
            await webhook_sender.start()
        intake = Intake(
            outbox.notifications, dispatcher, app_metrics, settings, mail_templates, suppressions=suppression_list
        )
        app.state.intake = intake
        job_runner = JobRunner(outbox.jobs, intake)
        app.state.job_runner = job_runner
        await job_runner.resume()
        log.info(
            "service_started",
            outbox=describe_outbox(settings),
            smtp=f"{settings.SMTP_HOST}:{settings.SMTP_PORT}",
        )
        # Everything made at start (the app, its routes and models, the templates: ~75,000 objects) moves out
        # of the collector's reach: a full collection under load then took 3 ms instead of 50 (measured).
        gc.collect()
        gc.freeze()
        if not settings.api_keys():
            log.warning(
                "auth_disabled",
                detail="API_KEYS is empty: anyone who can reach this service can send mail through it;"
                " set API_KEYS to require `Authorization: Bearer <key>`",
            )
        if not settings.SMTP_VERIFY_CERTS:
            log.warning(
                "smtp_certificate_checks_disabled",
                detail="SMTP_VERIFY_CERTS is false: any certificate the SMTP server shows is accepted, so anyone"
                " on the path can read the mail and the login; for a development relay only",
            )
        try:
            yield
        finally:
            for task in (sweeper, refresher):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            await job_runner.stop()
            await outbox.jobs.close()
            await dispatcher.stop()
            if webhook_sender is not None:
                await webhook_sender.stop()
            await outbox.close()
            log.info("service_stopped")

    app = FastAPI(
        title="notification-service",
        summary="Accepts e-mail notifications, keeps them on disk, sends them in the background.",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry stays off: the service's metrics are Prometheus' (/metrics), and with it on
        # every request looks up the global OpenTelemetry providers in the environment (~6 % of an accept, py-spy).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = app_metrics
    app.state.login_throttle = LoginThrottle()
    # Everything but health and metrics needs an API key when API_KEYS is set.
    guarded: dict[str, Any] = {
        "dependencies": [Depends(require_api_key)],
        "responses": {**UNAUTHORIZED_RESPONSE, **LIMIT_RESPONSES},
    }
    app.state.templates = mail_templates
    # The batch router first: its path must win over /v1/notifications/{notification_id}.
    app.include_router(batch.router, **guarded)
    app.include_router(notifications.router, **guarded)
    app.include_router(templates.router, **guarded)
    app.include_router(jobs.router, **guarded)
    app.include_router(stats.router, **guarded)
    app.include_router(suppressions.router, **guarded)
    app.include_router(webhooks.router, **guarded)
    app.include_router(tutorial.router, **guarded)
    # The hosted APIs' routes (docs/compat.md), each with its own key check and error shape; off unless named.
    compat = {"resend": resend, "postmark": postmark}
    for name in settings.compat_apis():
        app.include_router(compat[name].router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # Last, so that the API's routes are matched first; the page checks its own session cookie.
    app.include_router(ui.router)
    app.add_exception_handler(QueueFull, queue_full_handler)
    app.add_exception_handler(OutboxUnavailable, outbox_unavailable_handler)
    app.add_exception_handler(RequestValidationError, errors.request_validation_error)
    # Inside the request-id middleware, so a 413 carries X-Request-ID too.
    # The CSV upload streams to disk under its own MAX_UPLOAD_BYTES instead.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.MAX_BODY_BYTES,
        exempt=frozenset({jobs.UPLOAD_PATH, ui.UPLOAD_PATH}),
        error_bodies={compat[name].PREFIX: body_limit_error(compat[name].SHAPE) for name in settings.compat_apis()},
    )
    app.add_middleware(RequestIdMiddleware)
    # Outermost, so that its clock covers the other middleware too.
    app.add_middleware(HttpMetricsMiddleware, metrics=app_metrics)
    return app


app = create_app()
