"""The FastAPI background-tasks tutorial's two routes, kept for people who follow it, on the real machinery:
the mail goes through the outbox and the dispatcher like any other notification."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, BackgroundTasks, Path, Request

from service.http.deps import IntakeDep
from service.http.schemas import Message
from service.intake.request import EmailAddress, NotificationRequest

log = structlog.get_logger("service.tutorial")

router = APIRouter(tags=["tutorial"])

PathEmail = Annotated[EmailAddress, Path(description="Where the mail goes")]


def write_notification(email: str) -> None:
    """The tutorial's `write_notification`, as a structured log event instead of a line in log.txt."""
    log.info(f"Notification sent to {email}", email=email)


@router.post("/send-notification/{email}", response_model=Message)
async def send_notification(
    email: PathEmail,
    request: Request,
    background_tasks: BackgroundTasks,
    intake: IntakeDep,
) -> Message:
    body = NotificationRequest(
        to=[email], subject="Notification", text=f"Hello,\n\nthis is a notification for {email}.\n"
    )
    await intake.accept(intake.build(body, request.state.request_id), background_tasks)
    background_tasks.add_task(write_notification, email)
    return Message(message="Notification sent in the background")


@router.post("/email/{to_email}", response_model=Message)
async def send_email(
    to_email: PathEmail,
    request: Request,
    background_tasks: BackgroundTasks,
    intake: IntakeDep,
) -> Message:
    body = NotificationRequest(
        to=[to_email],
        subject="Test email",
        text="This is a test email sent in the background.\n",
        html="<p>This is a test email sent in the background.</p>",
    )
    await intake.accept(intake.build(body, request.state.request_id), background_tasks)
    return Message(message="Email sent in the background")
