"""The floor: a FastAPI POST endpoint with the service's pydantic body that answers 202 and does nothing.

uvicorn benchmarks.bare_app:app
"""

from __future__ import annotations

from fastapi import FastAPI, Response, status

from service.schemas import NotificationRequest

app = FastAPI()


@app.post("/v1/notifications", status_code=status.HTTP_202_ACCEPTED)
async def accept(body: NotificationRequest) -> Response:
    return Response(status_code=status.HTTP_202_ACCEPTED)
