"""The app: `create_app()` wires routes, logging, and the lifespan that opens the outbox and runs
the dispatcher.

Run it with `uvicorn service.main:app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from service.api import batch, health, jobs, notifications, templates, tutorial
from service.config import Settings, load_settings
from service.dispatcher import Dispatcher
from service.jobs import JobRunner
from service.logging import RequestIdMiddleware, configure_logging
from service.mailer import SmtpProbe
from service.outbox import open_outbox
from service.outbox.jobs import open_job_store
from service.templates import load_templates_or_exit

log = structlog.get_logger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings)
    mail_templates = load_templates_or_exit(settings.TEMPLATES_DIR)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        outbox = open_outbox(settings)
        await outbox.open()
        dispatcher = Dispatcher(outbox, settings)
        app.state.outbox = outbox
        app.state.dispatcher = dispatcher
        app.state.smtp_probe = SmtpProbe(settings)
        await dispatcher.start()
        job_store = open_job_store(outbox)
        job_runner = JobRunner(job_store, mail_templates, settings, wake=lambda: dispatcher.notify("job"))
        app.state.job_store = job_store
        app.state.job_runner = job_runner
        await job_runner.resume()
        log.info(
            "service_started",
            outbox=str(settings.OUTBOX_PATH),
            smtp=f"{settings.SMTP_HOST}:{settings.SMTP_PORT}",
        )
        try:
            yield
        finally:
            await job_runner.stop()
            await dispatcher.stop()
            await outbox.close()
            log.info("service_stopped")

    app = FastAPI(
        title="notification-service",
        summary="Accepts e-mail notifications, keeps them on disk, sends them in the background.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.templates = mail_templates
    app.include_router(batch.router)
    app.include_router(notifications.router)
    app.include_router(health.router)
    app.include_router(tutorial.router)
    app.include_router(templates.router)
    app.include_router(jobs.router)
    app.add_middleware(RequestIdMiddleware)
    return app


app = create_app()
