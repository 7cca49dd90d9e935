"""The floor: a FastAPI POST endpoint with the service's pydantic body that answers 202 and does nothing.

It freezes the start-up objects out of the garbage collector's reach like the service does (service/main.py):
otherwise one full collection of them (~50 ms) lands in its p99 now and then, and the floor would look worse
than it is.

uvicorn benchmarks.bare_app:app
"""

from __future__ import annotations

import gc

from fastapi import FastAPI, Response, status

from service.intake.request import NotificationRequest

app = FastAPI()


@app.post("/v1/notifications", status_code=status.HTTP_202_ACCEPTED)
async def accept(body: NotificationRequest) -> Response:
    return Response(status_code=status.HTTP_202_ACCEPTED)


gc.collect()
gc.freeze()
