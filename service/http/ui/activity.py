"""The activity page (notifications newest first, counts, the last hour's chart) and one notification's page
(timeline, envelope, headers, text, sandboxed HTML, Retry, Cancel)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException

from service.domain import HistoryEntry, Outcome, Status
from service.http.ui.access import CSRF_FIELD, Access, require_access
from service.http.ui.backend import Backend
from service.http.ui.chart import minute_chart
from service.http.ui.pages import MAIL_HTML_CSP, PREFIX, PageRoute, render
from service.outbox import Notification

router = APIRouter(prefix=PREFIX, route_class=PageRoute, include_in_schema=False)
AccessDep = Annotated[Access, Depends(require_access)]

PAGE_SIZE = 50
_CURSOR = re.compile(r"^[0-9]{1,18}$")
# How often an open page fetches itself again: the list calmly, a notification or job on its way quickly.
ACTIVITY_REFRESH_MS = 5000
ACTIVE_REFRESH_MS = 1000


@dataclass(frozen=True, slots=True)
class Step:
    """One line of a notification's timeline."""

    title: str
    at: float | None = None
    detail: str | None = None
    kind: str = "done"  # done, current, warn or failed


def _failed_attempts(count: int) -> str:
    return f"{count} attempt{'s' if count != 1 else ''} failed"


# How each kind of history entry reads on the timeline, and its mark.
_HISTORY_STEP = {
    Outcome.SENT: ("Sent", "done"),
    Outcome.RETRY: ("Attempt failed, tried again later", "warn"),
    Outcome.FAILED: ("Failed", "failed"),
    Outcome.INTERRUPTED: ("Interrupted by a shutdown, tried again", "warn"),
    Outcome.RECOVERED: ("Left sending by a stopped process, queued again", "warn"),
    Outcome.REQUEUED: ("Queued again by a retry", "warn"),
    Outcome.CANCELED: ("Canceled: it will not be sent", "failed"),
}


def _history_step(entry: HistoryEntry) -> Step:
    title, kind = _HISTORY_STEP[entry.outcome]
    code = (
        f"{entry.smtp_code} " if entry.smtp_code and not (entry.message or "").startswith(str(entry.smtp_code)) else ""
    )
    return Step(title, entry.at, f"{code}{entry.message}" if entry.message else None, kind)


def timeline(n: Notification, max_attempts: int) -> list[Step]:
    """The notification's life as the outbox records it: accepted, every attempt's outcome from its history
    (the newest HISTORY_LIMIT), and where it stands now. Rows from before the history (migration 0005) show
    their attempts' count and last error instead."""
    steps = [Step("Accepted", n.created_at, f"request {n.request_id}" if n.request_id else None)]
    if n.status == Status.SCHEDULED:
        steps.append(Step("Scheduled: sent at its send_at", n.send_at, None, "current"))
        return steps
    if n.history:
        steps.extend(_history_step(entry) for entry in n.history)
        if n.status == Status.QUEUED:
            if n.attempts == 0:
                steps.append(Step("Waiting for a worker", None, None, "current"))
            else:
                steps.append(
                    Step(f"Attempt {n.attempts + 1} of {max_attempts} due", n.next_attempt_at, None, "current")
                )
        elif n.status == Status.SENDING:
            steps.append(Step(f"Attempt {n.attempts} of {max_attempts}: sending now", n.updated_at, None, "current"))
        return steps
    if n.status == Status.QUEUED:
        if n.attempts == 0 and n.last_error:
            steps.append(Step("Queued again by a retry", n.updated_at, f"the error before: {n.last_error}", "warn"))
        if n.attempts == 0:
            steps.append(Step("Waiting for a worker", None, None, "current"))
        else:
            # mark_retry stamps updated_at when the attempt failed.
            steps.append(Step(_failed_attempts(n.attempts), n.updated_at, n.last_error, "warn"))
            steps.append(Step(f"Attempt {n.attempts + 1} of {max_attempts} due", n.next_attempt_at, None, "current"))
    elif n.status == Status.SENDING:
        if n.attempts > 1 and n.last_error:
            steps.append(Step(_failed_attempts(n.attempts - 1), None, n.last_error, "warn"))
        steps.append(Step(f"Attempt {n.attempts} of {max_attempts}: sending now", n.updated_at, None, "current"))
    elif n.status == Status.SENT:
        if n.attempts > 1 and n.last_error:
            steps.append(Step(_failed_attempts(n.attempts - 1), None, n.last_error, "warn"))
        steps.append(Step(f"Sent at attempt {n.attempts}", n.sent_at, n.smtp_reply))
    elif n.status == Status.FAILED:
        steps.append(Step(f"Failed at attempt {n.attempts}", n.updated_at, n.last_error, "failed"))
    return steps


@router.get("/")
async def activity(
    request: Request,
    access: AccessDep,
    status: str | None = None,
    recipient: str = "",
    cursor: str | None = None,
) -> Response:
    backend = Backend(request)
    chosen = Status(status) if status in set(Status) else None
    recipient = recipient.strip()[:320]
    after = cursor if cursor and _CURSOR.match(cursor) else None
    stats = await backend.stats()
    page = await backend.page(status=chosen, recipient=recipient, limit=PAGE_SIZE, cursor=after)
    return render(
        request,
        "activity.html",
        {
            "counts": stats.gauges.counts,
            "chart": minute_chart(stats.sent_per_minute, stats.failed_per_minute),
            "items": page.items,
            "next_cursor": page.next_cursor,
            "status": chosen,
            "recipient": recipient,
            "first_page": after is None,
            "refresh_ms": ACTIVITY_REFRESH_MS,
        },
    )


async def _notification_or_404(backend: Backend, notification_id: str) -> Notification:
    notification = await backend.notification(notification_id)
    if notification is None:
        raise HTTPException(404, f"no notification with id {notification_id!r}")
    return notification


def _notification_page(
    request: Request, backend: Backend, n: Notification, *, problem: str | None = None, status_code: int = 200
) -> Response:
    return render(
        request,
        "notification.html",
        {
            "n": n,
            "steps": timeline(n, backend.settings.MAX_ATTEMPTS),
            "envelope": backend.envelope(n),
            "headers": backend.headers(n),
            "problem": problem,
            "refresh_ms": ACTIVE_REFRESH_MS
            if n.status in (Status.QUEUED, Status.SENDING)
            else ACTIVITY_REFRESH_MS
            if n.status == Status.SCHEDULED
            else 0,
        },
        status_code=status_code,
    )


@router.get("/notifications/{notification_id}")
async def notification_page(request: Request, notification_id: str, access: AccessDep) -> Response:
    backend = Backend(request)
    return _notification_page(request, backend, await _notification_or_404(backend, notification_id))


@router.post("/notifications/{notification_id}/retry")
async def retry(request: Request, notification_id: str, access: AccessDep, background: BackgroundTasks) -> Response:
    form = await request.form()
    access.check_csrf(request, str(form.get(CSRF_FIELD) or ""))
    backend = Backend(request)
    try:
        await backend.retry(notification_id, background)
    except HTTPException as exc:
        if exc.status_code == 404:
            raise
        n = await _notification_or_404(backend, notification_id)
        return _notification_page(request, backend, n, problem=str(exc.detail), status_code=exc.status_code)
    return RedirectResponse(f"{PREFIX}/notifications/{notification_id}", status_code=303, background=background)


@router.post("/notifications/{notification_id}/cancel")
async def cancel(request: Request, notification_id: str, access: AccessDep) -> Response:
    form = await request.form()
    access.check_csrf(request, str(form.get(CSRF_FIELD) or ""))
    backend = Backend(request)
    try:
        await backend.cancel(notification_id)
    except HTTPException as exc:
        if exc.status_code == 404:
            raise
        n = await _notification_or_404(backend, notification_id)
        return _notification_page(request, backend, n, problem=str(exc.detail), status_code=exc.status_code)
    return RedirectResponse(f"{PREFIX}/notifications/{notification_id}", status_code=303)


@router.get("/notifications/{notification_id}/html")
async def html_part(request: Request, notification_id: str, access: AccessDep) -> Response:
    """The mail's HTML as it was accepted, for the sandboxed frame of its page: under MAIL_HTML_CSP."""
    n = await _notification_or_404(Backend(request), notification_id)
    if n.html is None:
        raise HTTPException(404, "this notification has no HTML part")
    return Response(
        n.html,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": MAIL_HTML_CSP,
            "X-Frame-Options": "SAMEORIGIN",
            "Cache-Control": "no-store",
        },
    )
