"""`POST /v1/notifications/batch`: many notifications in one request, each judged on its own, the valid ones
written to the outbox in one transaction and handed to the dispatcher with one wake-up."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from service.http.deps import IdempotencyDep, IntakeDep, SettingsDep
from service.http.errors import json_safe
from service.http.idempotency import (
    ACCEPTING_RESPONSES,
    REPLAYED_HEADER,
    REPLAYED_HEADER_DOC,
    IdempotencyKeyHeader,
)
from service.intake.accept import Intake
from service.intake.attachments import AttachmentsTooLarge
from service.intake.request import NotificationRequest, SendAt
from service.outbox import IdempotencyKeyTaken, Notification

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])


class BatchRequest(BaseModel):
    # Items stay raw here: each one is validated on its own, so one bad item cannot refuse the others.
    notifications: list[Any] = Field(min_length=1)
    # Every item's send_at unless the item names its own: the batch is scheduled together.
    send_at: SendAt | None = None


class BatchItemError(BaseModel):
    detail: list[dict[str, Any]]


class BatchItem(BaseModel):
    id: str | None = None
    status: str | None = None
    error: BatchItemError | None = None


class BatchResponse(BaseModel):
    items: list[BatchItem]


def build_batch_item(
    raw: Any, intake: Intake, request_id: str | None, send_at: datetime | None = None
) -> Notification | BatchItemError:
    """One item of a batch: a notification ready for the outbox, or the 422 detail it would have had alone.
    `send_at` (the batch's) applies to an item that has none of its own."""
    if send_at is not None and isinstance(raw, dict) and raw.get("send_at") is None:
        raw = {**raw, "send_at": send_at}
    try:
        return intake.build(NotificationRequest.model_validate(raw), request_id)
    except ValidationError as exc:
        return BatchItemError(detail=json_safe(jsonable_encoder(exc.errors(include_url=False))))
    except RequestValidationError as exc:
        return BatchItemError(detail=json_safe(jsonable_encoder(exc.errors())))
    except AttachmentsTooLarge as exc:
        # The item's 413, in the shape of the others' details: the batch goes on without it.
        return BatchItemError(
            detail=[{"type": "attachments_too_large", "loc": ["body", "attachments"], "msg": exc.detail, "input": None}]
        )


@router.post(
    "/batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchResponse,
    response_model_exclude_none=True,
    summary="Accept up to BATCH_LIMIT notifications; one result per item, in order",
    responses={202: {"headers": {REPLAYED_HEADER: REPLAYED_HEADER_DOC}}, **ACCEPTING_RESPONSES},
)
async def create_batch(
    batch: BatchRequest,
    request: Request,
    background: BackgroundTasks,
    intake: IntakeDep,
    settings: SettingsDep,
    idempotency: IdempotencyDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    if len(batch.notifications) > settings.BATCH_LIMIT:
        raise RequestValidationError(
            [
                {
                    "type": "too_long",
                    "loc": ("body", "notifications"),
                    "msg": f"{len(batch.notifications)} notifications in one batch;"
                    f" at most BATCH_LIMIT={settings.BATCH_LIMIT} are allowed",
                    "input": None,
                }
            ]
        )
    async with idempotency.begin(request, idempotency_key, batch) as claim:
        if claim.replay is not None:
            return claim.replay
        results = [
            build_batch_item(raw, intake, request.state.request_id, batch.send_at) for raw in batch.notifications
        ]
        accepted = [result for result in results if isinstance(result, Notification)]
        answer = (
            BatchResponse(
                items=[
                    BatchItem(id=result.id, status=result.status)
                    if isinstance(result, Notification)
                    else BatchItem(error=result)
                    for result in results
                ]
            )
            .model_dump_json(exclude_none=True)
            .encode()
        )
        try:
            # One transaction for every valid item, with the key's record (the answer) when there is a key.
            await intake.accept_batch(
                accepted,
                background,
                rejected=len(results) - len(accepted),
                idempotency=claim.record(status.HTTP_202_ACCEPTED, answer, {}),
            )
        except IdempotencyKeyTaken:
            return await idempotency.replay_taken(claim)
        return Response(answer, status.HTTP_202_ACCEPTED, media_type="application/json")
