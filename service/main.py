"""The app: `create_app()` wires routes, logging, and the lifespan that opens the outbox and runs
the dispatcher.

Run it with `uvicorn service.main:app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from service.api import health, notifications, tutorial
from service.config import Settings, load_settings
from service.dispatcher import Dispatcher
from service.logging import RequestIdMiddleware, configure_logging
from service.mailer import SmtpProbe
from service.outbox import describe_outbox, open_outbox

log = structlog.get_logger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        outbox = open_outbox(settings)
        await outbox.open()
        dispatcher = Dispatcher(outbox, settings)
        app.state.outbox = outbox
        app.state.dispatcher = dispatcher
        app.state.smtp_probe = SmtpProbe(settings)
        await dispatcher.start()
        log.info(
            "service_started",
            outbox=describe_outbox(settings),
            smtp=f"{settings.SMTP_HOST}:{settings.SMTP_PORT}",
        )
        try:
            yield
        finally:
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
    app.include_router(notifications.router)
    app.include_router(health.router)
    app.include_router(tutorial.router)
    app.add_middleware(RequestIdMiddleware)
    return app


app = create_app()
