"""`/v1/notifications`: accept a notification (on disk before the 202), read its status, list, retry, cancel."""

from __future__ import annotations

import time
from typing import Annotated

import structlog
from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, Request, Response, status

from service.domain import TAG_PATTERN, Status
from service.http.deps import Accepting, DispatcherDep, NotificationStoreDep
from service.http.idempotency import (
    ACCEPTING_RESPONSES,
    REPLAYED_HEADER,
    REPLAYED_HEADER_DOC,
    IdempotencyKeyHeader,
)
from service.http.schemas import NotificationPage, NotificationStatus, StatusField
from service.intake.request import NotificationRequest
from service.outbox import IdempotencyKeyTaken
from service.outbox.status import to_status

log = structlog.get_logger("service.http.routes")

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=NotificationStatus,
    summary="Accept a notification: stored on disk, then sent in the background",
    responses={
        202: {
            "headers": {
                "Location": {"description": "URL of the status object", "schema": {"type": "string"}},
                REPLAYED_HEADER: REPLAYED_HEADER_DOC,
            }
        },
        **ACCEPTING_RESPONSES,
    },
)
async def create_notification(
    body: NotificationRequest,
    request: Request,
    background: BackgroundTasks,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    accepting = Accepting.of(request)
    async with accepting.idempotency.begin(request, idempotency_key, body) as claim:
        if claim.replay is not None:
            return claim.replay
        notification = accepting.intake.build(body, request.state.request_id)
        # The answer is fixed before the commit: it is stored with the notification for replays.
        notification.updated_at = notification.created_at
        answer = to_status(notification).model_dump_json().encode()
        headers = {"Location": f"/v1/notifications/{notification.id}"}
        try:
            await accepting.intake.accept(
                notification, background, idempotency=claim.record(status.HTTP_202_ACCEPTED, answer, headers)
            )
        except IdempotencyKeyTaken:
            return await accepting.idempotency.replay_taken(claim)
        return Response(answer, status.HTTP_202_ACCEPTED, headers, media_type="application/json")


@router.get("", response_model=NotificationPage, summary="List notifications, newest first")
async def list_notifications(
    outbox: NotificationStoreDep,
    status_: Annotated[StatusField | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    tag: Annotated[str | None, Query(pattern=TAG_PATTERN, description="Only notifications with this tag")] = None,
) -> NotificationPage:
    page = await outbox.page(status=None if status_ is None else Status(status_), limit=limit, cursor=cursor, tag=tag)
    return NotificationPage(items=[to_status(n) for n in page.items], next_cursor=page.next_cursor)


@router.get(
    "/{notification_id}",
    response_model=NotificationStatus,
    responses={404: {"description": "No such notification"}},
    summary="One notification's status",
)
async def get_notification(notification_id: str, outbox: NotificationStoreDep) -> NotificationStatus:
    notification = await outbox.get(notification_id)
    if notification is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no notification with id {notification_id!r}")
    return to_status(notification)


@router.post(
    "/{notification_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=NotificationStatus,
    responses={404: {"description": "No such notification"}, 409: {"description": "Not failed"}},
    summary="Queue a failed notification again, its attempts reset",
)
async def retry_notification(
    notification_id: str, outbox: NotificationStoreDep, dispatcher: DispatcherDep, background: BackgroundTasks
) -> NotificationStatus:
    notification = await outbox.requeue_failed(notification_id, time.time())
    if notification is None:
        existing = await outbox.get(notification_id)
        if existing is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no notification with id {notification_id!r}")
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"notification {notification_id} is {existing.status}; only a failed notification can be retried",
        )
    with structlog.contextvars.bound_contextvars(notification_id=notification.id):
        # Under the retry request's own id; the original one too, so one grep still finds the whole life.
        log.info("notification_requeued", original_request_id=notification.request_id)
    background.add_task(dispatcher.notify, notification.id)
    return to_status(notification)


@router.post(
    "/{notification_id}/cancel",
    response_model=NotificationStatus,
    responses={
        404: {"description": "No such notification"},
        409: {"description": "Already sending, sent, failed or canceled: nothing left to cancel"},
    },
    summary="Cancel a scheduled or queued notification before it is sent",
)
async def cancel_notification(notification_id: str, outbox: NotificationStoreDep) -> NotificationStatus:
    # One conditional UPDATE in the store: a claim by the dispatcher and this cancel cannot both win.
    notification = await outbox.cancel(notification_id, time.time())
    if notification is None:
        existing = await outbox.get(notification_id)
        if existing is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no notification with id {notification_id!r}")
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"notification {notification_id} is {existing.status}; only a scheduled or queued notification"
            " can be canceled",
        )
    log.info("notification_canceled", notification_id=notification.id, original_request_id=notification.request_id)
    return to_status(notification)
