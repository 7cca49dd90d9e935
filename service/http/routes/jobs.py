"""`/v1/jobs`: upload a CSV for a mail-merge (streamed to disk, never whole in memory), follow its progress,
download its rejected rows."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError
from python_multipart.exceptions import ParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.config import Settings
from service.http.deps import SettingsDep, TemplatesDep
from service.intake.accept import scheduled_for
from service.intake.csv_jobs import CsvRejected, JobRunner, read_header
from service.intake.request import SendAt, parse_tags
from service.intake.templates import Templates
from service.outbox.errors import OutboxUnavailable
from service.outbox.jobs import Job, JobStore
from service.outbox.status import JobStatus, to_job_status

log = structlog.get_logger("service.http.routes")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
# The upload route: exempt from MAX_BODY_BYTES, it enforces MAX_UPLOAD_BYTES itself while streaming to disk.
UPLOAD_PATH = "/v1/jobs"

FORM_FIELD_MAX_BYTES = 1024


async def get_job_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.outbox.jobs
    return store


async def get_job_runner(request: Request) -> JobRunner:
    runner: JobRunner = request.app.state.job_runner
    return runner


JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
# A look at an upload's form fields before the job is stored (the web page's CSRF check); raises to refuse.
FieldsCheck = Callable[[dict[str, str]], None]
JobRunnerDep = Annotated[JobRunner, Depends(get_job_runner)]


def _invalid(field: str, msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": msg, "input": None}])


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the upload is over MAX_UPLOAD_BYTES={limit}")


class _Part:
    def __init__(self) -> None:
        self.header_field = b""
        self.header_value = b""
        self.name = ""
        self.is_file = False


async def receive_upload(request: Request, path: Path, max_bytes: int) -> tuple[dict[str, str], bool]:
    """Stream a multipart body: the `file` part into `path` (at most `max_bytes`), the other fields into a dict.
    Returns the fields and whether a `file` part came."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise _invalid("file", "send the CSV as multipart/form-data: curl -F file=@people.csv -F template=welcome")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise _too_large(max_bytes)

    events: list[tuple[str, bytes]] = []
    part = _Part()
    fields: dict[str, bytearray] = {}
    written = 0
    got_file = False

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        nonlocal got_file
        if part.header_field.lower() == b"content-disposition":
            _, disposition = parse_options_header(part.header_value)
            part.name = disposition.get(b"name", b"").decode("utf-8", "replace")
            part.is_file = part.name == "file"
            # Known from the part's headers: an empty file sends no data, and is then "empty", not "missing".
            got_file = got_file or part.is_file
        part.header_field, part.header_value = b"", b""

    def on_part_begin() -> None:
        part.name, part.is_file = "", False

    def on_part_data(data: bytes, start: int, end: int) -> None:
        events.append(("file" if part.is_file else part.name, data[start:end]))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    file: BinaryIO = await asyncio.to_thread(path.open, "wb")
    try:
        async for body_chunk in request.stream():
            try:
                parser.write(body_chunk)
            except ParseError as exc:
                raise _invalid("file", f"the multipart body is malformed: {exc}") from None
            file_bytes = bytearray()
            for name, data in events:
                if name == "file":
                    file_bytes += data
                elif name:
                    value = fields.setdefault(name, bytearray())
                    value += data
                    if len(value) > FORM_FIELD_MAX_BYTES:
                        raise _invalid(name, f"form field over {FORM_FIELD_MAX_BYTES} bytes")
            events.clear()
            written += len(file_bytes)
            if written > max_bytes:
                raise _too_large(max_bytes)
            if file_bytes:
                await asyncio.to_thread(file.write, file_bytes)
        try:
            parser.finalize()
        except ParseError as exc:
            raise _invalid("file", f"the multipart body is malformed: {exc}") from None
    except Exception:
        await asyncio.to_thread(file.close)
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    await asyncio.to_thread(file.close)
    return {name: value.decode("utf-8", "replace") for name, value in fields.items()}, got_file


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobStatus,
    summary="Start a mail-merge: a CSV (multipart `file`, with an `email` column) and a `template` name",
    responses={
        202: {"headers": {"Location": {"description": "URL of the job's status"}}},
        413: {"description": "The upload is over MAX_UPLOAD_BYTES"},
        # Declared by hand: the route reads its multipart body itself, so FastAPI does not add it.
        422: {
            # FastAPI's own schema of a 422, defined because the JSON routes use it.
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
            "description": "Not multipart, no `file` or `template`, an unknown template, or a CSV that is empty,"
            " has no `email` column or is not UTF-8 (the byte offset and line say where)",
        },
    },
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "template"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "template": {"type": "string"},
                            "send_at": {
                                "type": "string",
                                "format": "date-time",
                                "description": "RFC 3339 with an offset: every row is scheduled for it",
                            },
                            "tags": {
                                "type": "string",
                                "description": "Comma-separated tags for every row's notification, e.g. welcome,spring",
                            },
                        },
                    }
                }
            },
            "required": True,
        }
    },
)
async def create_job(
    request: Request,
    response: Response,
    settings: SettingsDep,
    templates: TemplatesDep,
    store: JobStoreDep,
    runner: JobRunnerDep,
) -> JobStatus:
    job = await receive_job(request, settings, templates, store, runner)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return to_job_status(job)


async def receive_job(
    request: Request,
    settings: Settings,
    templates: Templates,
    store: JobStore,
    runner: JobRunner,
    *,
    check_fields: FieldsCheck | None = None,
) -> Job:
    """A mail-merge upload taken in: streamed to disk, checked (a `file`, a known `template`, a header with an
    `email` column; else a 422 and the file is gone), stored and started. The API's route and the web page's,
    whose `check_fields` (its CSRF check) sees the form's fields before anything is stored."""
    job_id = str(uuid.uuid4())
    path = settings.JOBS_DIR / f"{job_id}.csv"
    try:
        await asyncio.to_thread(settings.JOBS_DIR.mkdir, parents=True, exist_ok=True)
        fields, got_file = await receive_upload(request, path, settings.MAX_UPLOAD_BYTES)
    except OSError as exc:
        # A full disk (or an unwritable JOBS_DIR): the 503 of an outbox that cannot be written, not a 500.
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise OutboxUnavailable(f"the upload could not be stored in {settings.JOBS_DIR}: {exc}") from exc
    try:
        if check_fields is not None:
            check_fields(fields)
        template = fields.get("template", "").strip()
        if not got_file:
            raise _invalid("file", "no `file` part: send the CSV as -F file=@people.csv")
        if templates.get(template) is None:
            raise _invalid("template", f"no template {template!r} (known: {', '.join(templates.names()) or 'none'})")
        send_at = _job_send_at(fields.get("send_at", "").strip(), settings)
        try:
            tags = parse_tags(fields.get("tags", ""))
        except ValueError as exc:
            raise _invalid("tags", str(exc)) from None
        try:
            await asyncio.to_thread(read_header, path)
        except CsvRejected as exc:
            raise _invalid("file", str(exc)) from None
    except Exception:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    job = Job(
        id=job_id,
        template=template,
        csv_path=str(path),
        created_at=time.time(),
        request_id=request.state.request_id,
        send_at=send_at,
        tags=tags,
    )
    await store.create(job)
    log.info("job_accepted", job_id=job.id, template=template, tags=tags or None)
    runner.start(job)
    return job


_SEND_AT: TypeAdapter[datetime] = TypeAdapter(SendAt)


def _job_send_at(value: str, settings: Settings) -> float | None:
    """The form's `send_at` (RFC 3339 with an offset, as in a JSON request), checked like one: for every row."""
    if not value:
        return None
    try:
        parsed = _SEND_AT.validate_python(value)
    except ValidationError as exc:
        raise _invalid("send_at", "; ".join(error["msg"] for error in exc.errors())) from None
    return scheduled_for(parsed, settings, time.time())


async def _job_or_404(store: JobStore, job_id: str) -> Job:
    job = await store.get(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job with id {job_id!r}")
    return job


@router.get("/{job_id}", response_model=JobStatus, responses={404: {"description": "No such job"}})
async def get_job(job_id: str, store: JobStoreDep) -> JobStatus:
    """A job's progress: rows done, accepted and rejected, its notifications by state, the first 100 errors."""
    return to_job_status(await _job_or_404(store, job_id))


# OWASP's CSV injection list: a cell whose text starts (after any spaces) with = + - @, or starts with a tab or
# CR, is a formula to a spreadsheet; some locales' spreadsheets read the full-width = + - @ the same way.
_FORMULA = "=+\\-@\uff1d\uff0b\uff0d\uff20"
_FORMULA_START = re.compile(rf"^(?:[\t\r]|\s*[{_FORMULA}])")
# The same behind a delimiter or quote: a spreadsheet splitting at ';' or tab (not ',') starts a cell there.
_FORMULA_AFTER_DELIMITER = re.compile(rf"([,;\t\r\n\"'][\s\"']*)(?=[{_FORMULA}])")


def _cell(value: Any) -> str:
    """A cell of the uploader's own text, read by a spreadsheet as text: a leading `'` where a formula could
    start (OWASP's advice), and no raw NUL, which no spreadsheet or text tool expects in a CSV."""
    text = "" if value is None else str(value).replace("\x00", "\ufffd")
    text = _FORMULA_AFTER_DELIMITER.sub(r"\1'", text)
    return "'" + text if _FORMULA_START.match(text) else text


@router.get(
    "/{job_id}/errors.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}, 404: {"description": "No such job"}},
)
async def get_job_errors(job_id: str, store: JobStoreDep) -> StreamingResponse:
    """Every rejected row: its row number in the CSV (the header is row 1), its email, why."""
    await _job_or_404(store, job_id)

    async def lines() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["row", "email", "reason"])
        after = 0
        while True:
            errors = await store.errors_after(job_id, after, 1000)
            for error in errors:
                writer.writerow([error.row, _cell(error.email), _cell(error.reason)])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(errors) < 1000:
                return
            after = errors[-1].row

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="job-{job_id}-errors.csv"'},
    )
