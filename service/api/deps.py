"""Typed dependencies the routes ask for: the app's outbox, dispatcher and settings."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.dispatcher import Dispatcher
from service.mailer import SmtpProbe
from service.outbox import Outbox


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_outbox(request: Request) -> Outbox:
    outbox: Outbox = request.app.state.outbox
    return outbox


async def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


async def get_smtp_probe(request: Request) -> SmtpProbe:
    probe: SmtpProbe = request.app.state.smtp_probe
    return probe


SettingsDep = Annotated[Settings, Depends(get_settings)]
OutboxDep = Annotated[Outbox, Depends(get_outbox)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
SmtpProbeDep = Annotated[SmtpProbe, Depends(get_smtp_probe)]
