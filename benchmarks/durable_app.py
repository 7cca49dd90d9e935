"""The floor of any design that keeps the service's promise: the bare endpoint (benchmarks/bare_app.py) plus
one thing, the notification committed to the SQLite outbox (the service's own, group commit and all) before
the 202. Nothing sends it; no key, no request id, no metrics, no log line, no status object.

OUTBOX_PATH=/tmp/floor.sqlite3 uvicorn benchmarks.durable_app:app
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response, status

from service.intake.request import NotificationRequest
from service.outbox import Notification
from service.outbox.sqlite import sqlite_outbox

outbox = sqlite_outbox(os.environ.get("OUTBOX_PATH") or os.path.join(tempfile.gettempdir(), "durable-floor.sqlite3"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await outbox.open()
    gc.collect()
    gc.freeze()
    yield
    await outbox.close()


app = FastAPI(lifespan=lifespan)


@app.post("/v1/notifications", status_code=status.HTTP_202_ACCEPTED)
async def accept(body: NotificationRequest) -> Response:
    notification_id = str(uuid.uuid4())
    await outbox.notifications.add(
        [
            Notification(
                id=notification_id,
                to=body.to,
                subject=body.subject or "",
                text=body.text,
                message_id=f"<{notification_id}@example.com>",
                created_at=time.time(),
            )
        ]
    )
    return Response(status_code=status.HTTP_202_ACCEPTED)
