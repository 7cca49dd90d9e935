"""The jobs page: upload a CSV for a mail-merge (the API's own upload and checks), follow each job's progress
bar live, read its rejected rows and download them as errors.csv."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException

from service.http.ui.access import CSRF_FIELD, Access, require_access
from service.http.ui.activity import ACTIVE_REFRESH_MS, ACTIVITY_REFRESH_MS
from service.http.ui.backend import Backend
from service.http.ui.pages import PREFIX, PageRoute, render
from service.http.ui.send import field_errors
from service.outbox.jobs import RUNNING, Job

router = APIRouter(prefix=PREFIX, route_class=PageRoute, include_in_schema=False)
AccessDep = Annotated[Access, Depends(require_access)]

# The upload's path: like the API's, it streams to disk under MAX_UPLOAD_BYTES, not MAX_BODY_BYTES.
UPLOAD_PATH = f"{PREFIX}/jobs"
JOBS_LISTED = 20


@dataclass(frozen=True, slots=True)
class Segment:
    kind: str
    start: float
    width: float


@dataclass(frozen=True, slots=True)
class Progress:
    """A job's bar: of its CSV's rows, those sent, failed, rejected and waiting to be sent. It is full when every
    row has an outcome (sent, failed or rejected)."""

    total: int | None
    finished: int
    segments: list[Segment]
    active: bool


def progress(job: Job) -> Progress:
    finished = job.sent + job.failed + job.rejected
    active = job.status == RUNNING or job.queued > 0
    if not job.total_rows:
        return Progress(job.total_rows, finished, [], active)
    segments, start = [], 0.0
    for kind, count in (
        ("sent", job.sent),
        ("failed", job.failed),
        ("rejected", job.rejected),
        ("waiting", job.queued),
    ):
        width = round(100 * count / job.total_rows, 3)
        if width:
            segments.append(Segment(kind, round(start, 3), width))
        start += width
    return Progress(job.total_rows, finished, segments, active)


def _jobs_page(
    request: Request, jobs: list[Job], *, values: dict[str, str], errors: dict[str, list[str]], status_code: int = 200
) -> Response:
    backend = Backend(request)
    active = any(progress(job).active for job in jobs)
    return render(
        request,
        "jobs.html",
        {
            "jobs": [(job, progress(job)) for job in jobs],
            "templates": backend.mail_templates(),
            "values": values,
            "errors": errors,
            "refresh_ms": ACTIVE_REFRESH_MS if active else ACTIVITY_REFRESH_MS,
        },
        status_code=status_code,
    )


@router.get("/jobs")
async def jobs_page(request: Request, access: AccessDep) -> Response:
    jobs = await Backend(request).jobs(JOBS_LISTED)
    return _jobs_page(request, jobs, values={}, errors={})


@router.post("/jobs")
async def upload(request: Request, access: AccessDep) -> Response:
    backend = Backend(request)
    fields: dict[str, str] = {}

    def check_fields(received: dict[str, str]) -> None:
        fields.update(received)
        access.check_csrf(request, received.get(CSRF_FIELD))

    try:
        job = await backend.start_job(request, check_fields)
    except RequestValidationError as exc:
        errors = field_errors(list(exc.errors()), {}, ("file", "template"))
        status_code = 422
    except HTTPException as exc:
        if exc.status_code != 413:
            raise
        errors, status_code = {"file": [str(exc.detail)]}, 413
    else:
        return RedirectResponse(f"{PREFIX}/jobs/{job.id}", status_code=303)
    values = {"template": fields.get("template", "")}
    return _jobs_page(request, await backend.jobs(JOBS_LISTED), values=values, errors=errors, status_code=status_code)


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str, access: AccessDep) -> Response:
    job = await Backend(request).job(job_id)
    if job is None:
        raise HTTPException(404, f"no job with id {job_id!r}")
    shown = progress(job)
    return render(
        request,
        "job.html",
        {"job": job, "progress": shown, "refresh_ms": ACTIVE_REFRESH_MS if shown.active else 0},
    )


@router.get("/jobs/{job_id}/errors.csv")
async def job_errors(request: Request, job_id: str, access: AccessDep) -> Response:
    return await Backend(request).job_errors_csv(job_id)
