"""`/v1/webhooks/deliveries`: every event on its way to each URL; list them (the given-up ones first of all), and
send one again."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Literal

import structlog
from fastapi import APIRouter, HTTPException, Query, status

from service.http.deps import WebhookSenderDep, WebhookStoreDep
from service.http.schemas import ErrorDetail, WebhookDelivery, WebhookDeliveryPage
from service.outbox.webhooks import PENDING, Delivery

log = structlog.get_logger("service.http.routes")

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def to_delivery(d: Delivery) -> WebhookDelivery:
    return WebhookDelivery(
        id=d.id,
        event_id=d.event_id,
        event_type=d.event_type,
        url=d.url,
        status=d.status,
        attempts=d.attempts,
        last_error=d.last_error,
        response_code=d.response_code,
        next_attempt_at=datetime.fromtimestamp(d.next_attempt_at, UTC) if d.status == PENDING else None,
        created_at=datetime.fromtimestamp(d.created_at, UTC),
        updated_at=datetime.fromtimestamp(d.updated_at, UTC),
    )


@router.get("/deliveries", response_model=WebhookDeliveryPage, summary="List webhook deliveries, newest first")
async def list_deliveries(
    store: WebhookStoreDep,
    status_: Annotated[Literal["pending", "sending", "delivered", "failed"] | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> WebhookDeliveryPage:
    page = await store.page(status=status_, limit=limit, cursor=cursor)
    return WebhookDeliveryPage(items=[to_delivery(d) for d in page.items], next_cursor=page.next_cursor)


@router.post(
    "/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDelivery,
    responses={
        404: {"model": ErrorDetail, "description": "No such delivery"},
        409: {"model": ErrorDetail, "description": "Still pending or being sent: it goes by itself"},
    },
    summary="Send a delivery again (a failed one, or a delivered one a receiver lost): pending, attempts reset",
)
async def retry_delivery(delivery_id: str, store: WebhookStoreDep, sender: WebhookSenderDep) -> WebhookDelivery:
    delivery = await store.retry(delivery_id, time.time())
    if delivery is None:
        existing = await store.get(delivery_id)
        if existing is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook delivery with id {delivery_id!r}")
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"delivery {delivery_id!r} is {existing.status}: it is sent without a retry"
        )
    if sender is not None:
        sender.wake()
    log.info("webhook_delivery_requeued", delivery_id=delivery_id, event_id=delivery.event_id)
    return to_delivery(delivery)
