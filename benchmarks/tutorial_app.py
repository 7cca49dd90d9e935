"""The tutorial's way: `BackgroundTasks` + `smtplib`, one SMTP connection per mail, nothing on disk.

SMTP_HOST=127.0.0.1 SMTP_PORT=1025 uvicorn benchmarks.tutorial_app:app
"""

from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage

from fastapi import BackgroundTasks, FastAPI, Response, status

from service.intake.request import NotificationRequest

SMTP_HOST = os.environ.get("SMTP_HOST", "127.0.0.1")
SMTP_PORT = int(os.environ.get("SMTP_PORT", "1025"))
MAIL_FROM = "notifications@example.com"

app = FastAPI()


def send_email(body: NotificationRequest) -> None:
    # A plain function: Starlette runs it in its thread pool after the response, as in the tutorial.
    message = EmailMessage()
    message["From"] = MAIL_FROM
    message["To"] = ", ".join(body.to)
    message["Subject"] = body.subject
    message.set_content(body.text or "")
    with smtplib.SMTP(SMTP_HOST, SMTP_PORT) as smtp:
        smtp.send_message(message)


@app.post("/v1/notifications", status_code=status.HTTP_202_ACCEPTED)
async def accept(body: NotificationRequest, background_tasks: BackgroundTasks) -> Response:
    background_tasks.add_task(send_email, body)
    return Response(status_code=status.HTTP_202_ACCEPTED)
