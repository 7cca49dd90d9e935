"""`/v1/suppressions`: the addresses no new notification is sent to; list them, add one, lift one."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError

from service.events.suppressions import envelope_address
from service.http.deps import SuppressionsDep
from service.http.schemas import ErrorDetail, SuppressionEntry, SuppressionPage, SuppressionRequest
from service.intake.request import normalize_address
from service.outbox import Suppression

log = structlog.get_logger("service.http.routes")

router = APIRouter(prefix="/v1/suppressions", tags=["suppressions"])


def to_entry(s: Suppression) -> SuppressionEntry:
    return SuppressionEntry(
        address=s.address,
        source=s.source,
        reason=s.reason,
        suppressing=s.suppressing,
        smtp_reply=s.smtp_reply,
        notification_id=s.notification_id,
        created_at=datetime.fromtimestamp(s.created_at, UTC),
    )


def checked_address(value: str, loc: tuple[str, ...]) -> str:
    """The addr-spec of `value`, as a notification's recipient would be written; a 422 when it is none."""
    try:
        normalized = normalize_address(value)
    except ValueError as exc:
        raise RequestValidationError([{"type": "value_error", "loc": loc, "msg": str(exc), "input": value}]) from None
    return envelope_address(normalized)


@router.get("", response_model=SuppressionPage, summary="List the suppression list, newest first")
async def list_suppressions(
    suppressions: SuppressionsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> SuppressionPage:
    page = await suppressions.store.page(limit=limit, cursor=cursor)
    return SuppressionPage(items=[to_entry(s) for s in page.items], next_cursor=page.next_cursor)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SuppressionEntry,
    # FastAPI's own answer to a body it cannot decode as text, before any JSON parsing.
    responses={400: {"model": ErrorDetail, "description": "The body could not be read as JSON text"}},
    summary="Suppress an address by hand",
)
async def add_suppression(body: SuppressionRequest, suppressions: SuppressionsDep) -> SuppressionEntry:
    address = checked_address(body.address, ("body", "address"))
    added = await suppressions.suppress(address, reason=body.reason, now=time.time())
    log.info("suppression_added", address=address, reason=body.reason)
    return to_entry(added)


@router.delete(
    "/{address}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "Not on the list"}},
    summary="Lift a suppression: the address gets mail again",
)
async def remove_suppression(address: str, suppressions: SuppressionsDep) -> Response:
    spec = checked_address(address, ("path", "address"))
    if not await suppressions.lift(spec):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{spec} is not on the suppression list")
    log.info("suppression_lifted", address=spec)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
