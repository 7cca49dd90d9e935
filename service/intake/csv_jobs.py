"""CSV mail-merge jobs: an uploaded CSV turned, row by row, into templated notifications in the outbox.

The CSV is read as a stream, JOB_CHUNK_ROWS rows at a time, so memory does not grow with the file. Each chunk's
notifications, its rejected rows and the job's progress commit in one transaction; a job cut short by a restart
resumes after the last committed row. Reading and rendering run in a thread, so a big job does not stall the
event loop that answers HTTP requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from pydantic import ValidationError

from service.config import Settings
from service.domain import Status
from service.intake.accept import Intake, build_notification
from service.intake.request import NotificationRequest, normalize_address
from service.intake.templates import MailTemplate, TemplateRenderError
from service.outbox import Notification, OutboxUnavailable
from service.outbox.jobs import DONE, JOB_FAILED, Job, JobStore, JobTaken, RowError

log = structlog.get_logger("service.intake.csv_jobs")

EMAIL_COLUMN = "email"
# utf-8-sig: a byte-order mark, as spreadsheet programs write, is not part of the first column's name.
CSV_ENCODING = "utf-8-sig"
# How often a job paused by backpressure looks again whether the dispatcher has caught up.
JOB_PAUSE_SECONDS = 0.25
# While the store is unreachable, a job tries again after this long, doubling up to the second value.
JOB_RETRY_SECONDS = (1.0, 30.0)


# Read this much of the file at a time when looking for where it stops being UTF-8.
_SCAN_BYTES = 1 << 16


class CsvRejected(Exception):
    """The CSV cannot be used (no header, no email column, not UTF-8, a row the reader cannot take); the message
    says what and where. A 422 at upload, a failed job later."""


def not_utf8(path: Path) -> CsvRejected:
    """Where the file stops being UTF-8, as a byte offset and a line in the file. UnicodeDecodeError's own
    offset counts from the start of the buffer being decoded (8 KiB at a time), not of the file."""
    offset, line, carried = 0, 1, b""
    with path.open("rb") as file:
        while True:
            chunk = file.read(_SCAN_BYTES)
            data = carried + chunk
            try:
                data.decode("utf-8")
                good, carried = data, b""
            except UnicodeDecodeError as exc:
                if chunk and exc.end == len(data) and exc.reason == "unexpected end of data":
                    # A character cut by the chunk's end: decoded with the next chunk.
                    good, carried = data[: exc.start], data[exc.start :]
                else:
                    line += data.count(b"\n", 0, exc.start)
                    where = f"byte 0x{data[exc.start]:02x} at byte offset {offset + exc.start} (line {line})"
                    return CsvRejected(f"the file is not UTF-8 text: {where}")
            if not chunk:
                return CsvRejected("the file is not UTF-8 text")
            offset += len(good)
            line += good.count(b"\n")


def read_header(path: Path) -> list[str]:
    """The CSV's column names, read from the first buffer of the file only; raises CsvRejected."""
    try:
        with path.open(encoding=CSV_ENCODING, newline="") as file:
            header = next(csv.reader(file), None)
    except UnicodeDecodeError:
        raise CsvRejected(f"{not_utf8(path)}; save it as CSV UTF-8") from None
    except csv.Error as exc:
        raise CsvRejected(f"the header row is not valid CSV: {exc}") from None
    if not header:
        raise CsvRejected("the file is empty: the first row must name the columns, one of them `email`")
    columns = [name.strip() for name in header]
    if EMAIL_COLUMN not in columns:
        raise CsvRejected(f"no `{EMAIL_COLUMN}` column in the header row (columns: {', '.join(columns)})")
    return columns


def count_rows(path: Path) -> int:
    """Data rows (blank lines aside); reads the whole file once, so a broken encoding shows before any mail.
    Raises CsvRejected."""
    with path.open(encoding=CSV_ENCODING, newline="") as file:
        rows = csv.reader(file)
        try:
            next(rows, None)
            return sum(1 for values in rows if values)
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except csv.Error as exc:
            raise CsvRejected(f"the file is not valid CSV at line {rows.line_num}: {exc}") from None


@dataclass
class Chunk:
    notifications: list[Notification] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    last_row: int = 0


class JobReader:
    """A job's CSV as numbered rows (the header is row 1, as a spreadsheet shows it), from where the job stopped."""

    def __init__(
        self,
        job: Job,
        template: MailTemplate,
        settings: Settings,
        narrow: Callable[[Notification], tuple[str, list[str]] | None] | None = None,
    ) -> None:
        self.job = job
        self.template = template
        self.settings = settings
        # Intake.narrow: a row whose address is suppressed is rejected, with the same words as a 422.
        self.narrow = narrow
        self._file = Path(job.csv_path).open(encoding=CSV_ENCODING, newline="")  # noqa: SIM115 - closed in close()
        self._reader = csv.reader(self._file)
        self.columns = [name.strip() for name in next(self._reader, [])]
        self._rows: Iterator[tuple[int, list[str]]] = (
            (number, values) for number, values in enumerate(self._reader, start=2) if number > job.rows_done
        )

    def close(self) -> None:
        self._file.close()

    def next_chunk(self, size: int) -> Chunk | None:
        """The next `size` rows, built into notifications or errors; None at the end of the file. Raises
        CsvRejected (the file was read whole before, so only when it changed since)."""
        chunk = Chunk()
        try:
            for number, values in self._rows:
                chunk.last_row = number
                if values:
                    self._build(number, values, chunk)
                if len(chunk.notifications) + len(chunk.errors) >= size:
                    break
        except UnicodeDecodeError:
            raise not_utf8(Path(self.job.csv_path)) from None
        except csv.Error as exc:
            raise CsvRejected(f"the file is not valid CSV at line {self._reader.line_num}: {exc}") from None
        return chunk if chunk.last_row else None

    def _build(self, number: int, values: list[str], chunk: Chunk) -> None:
        if len(values) > len(self.columns):
            raw_email = None
            reason = f"{len(values)} fields, but the header names {len(self.columns)} columns"
        else:
            # An empty cell is a missing variable: "Hello ," is worse than a rejected row; `| default(...)` helps.
            data = {name: value for name, value in zip(self.columns, values, strict=False) if value != ""}
            raw_email = data.get(EMAIL_COLUMN)
            try:
                chunk.notifications.append(self._notification(number, data))
                return
            except ValueError as exc:
                reason = str(exc)
        # What the uploader wrote, but no NUL: PostgreSQL cannot store one, and the chunk's write would fail
        # for ever (the job stuck as "outbox unavailable").
        email = None if raw_email is None else raw_email.replace("\x00", "\ufffd")
        chunk.errors.append(RowError(row=number, email=email, reason=reason.replace("\x00", "\ufffd")))

    def _notification(self, number: int, data: dict[str, str]) -> Notification:
        if EMAIL_COLUMN not in data:
            raise ValueError("email: empty")
        try:
            address = normalize_address(data[EMAIL_COLUMN])
        except ValueError as exc:
            raise ValueError(f"email: {exc}") from None
        try:
            rendered = self.template.render(data)
        except TemplateRenderError as exc:
            raise ValueError(f"{exc.part}: {exc.message}") from None
        try:
            request = NotificationRequest(
                to=[address],
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                metadata={"job_id": self.job.id, "job_row": str(number)},
                tags=self.job.tags,
            )
        except ValidationError as exc:
            raise ValueError(
                "; ".join(f"rendered {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            ) from None
        notification = build_notification(request, self.settings, self.job.request_id)
        refusal = self.narrow(notification) if self.narrow is not None else None
        if refusal is not None:
            raise ValueError(f"email: {refusal[0]}")
        if self.job.send_at is not None and self.job.send_at > notification.created_at:
            # The job's send_at, checked at its upload: every row due at the same moment, also rows read after a
            # restart (a send_at passed by then sends at once).
            notification.status = Status.SCHEDULED
            notification.send_at = notification.next_attempt_at = self.job.send_at
        return notification


class JobRunner:
    """Runs jobs in background tasks; resumes the unfinished ones at start, stops them at shutdown. Each chunk
    goes into the outbox through intake, like any other notification."""

    def __init__(self, store: JobStore, intake: Intake) -> None:
        self.store = store
        self.intake = intake
        self.templates = intake.templates
        self.settings = intake.settings
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def resume(self) -> int:
        jobs = await self.store.running()
        for job in jobs:
            log.info("job_resumed", job_id=job.id, rows_done=job.rows_done)
            self.start(job)
        return len(jobs)

    def start(self, job: Job) -> None:
        task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))

    async def join(self, job_id: str) -> None:
        """Wait until a job's task ends (tests; a finished job returns at once)."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.shield(task)

    async def stop(self) -> None:
        """Stop between chunks: what was committed stays, the rest is done after the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: Job) -> None:
        with structlog.contextvars.bound_contextvars(job_id=job.id, request_id=job.request_id):
            delay, interrupted = JOB_RETRY_SECONDS[0], False
            while True:
                try:
                    if interrupted:
                        # Its progress as the last committed chunk recorded it.
                        job = await self.store.get(job.id, errors=0) or job
                    reason = await self._process(job)
                    break
                except OutboxUnavailable as exc:
                    # The store is unreachable (a full disk, the database down): what was committed stays;
                    # the job goes on from its last committed chunk once the store answers again.
                    log.error("job_interrupted", error=str(exc), retry_in_seconds=delay)
                    await asyncio.sleep(delay)
                    delay, interrupted = min(delay * 2, JOB_RETRY_SECONDS[1]), True
                except JobTaken:
                    # Another replica runs this job now (this one lost its hold on it): it finishes it, not us.
                    log.warning("job_taken_over", rows_done=job.rows_done)
                    return
                except Exception as exc:
                    log.exception("job_crashed")
                    reason = f"internal error: {type(exc).__name__}: {exc}"
                    break
            status = DONE if reason is None else JOB_FAILED
            await self.store.finish(job.id, status=status, reason=reason, now=time.time())
            # The upload holds people's data: once every row is in the outbox (or the job failed), it goes.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(Path(job.csv_path).unlink, missing_ok=True)
            log.info("job_finished", status=status, reason=reason)

    async def _wait_for_room(self, job: Job) -> None:
        """Backpressure: the job's lead over the dispatcher stays under JOB_MAX_QUEUED notifications, so mail
        accepted one by one meanwhile waits behind at most that many, not behind the rest of a 100k-row CSV."""
        limit = self.settings.JOB_MAX_QUEUED
        if not limit:
            return
        paused = False
        while await self.store.waiting(job.id) >= limit:
            if not paused:
                log.info("job_paused", rows_done=job.rows_done, waiting_at_least=limit)
                paused = True
            await asyncio.sleep(JOB_PAUSE_SECONDS)
        if paused:
            log.info("job_continued", rows_done=job.rows_done)

    async def _process(self, job: Job) -> str | None:
        """Run a job to its end; returns why it failed, or None when every row is done."""
        template = self.templates.get(job.template)
        if template is None:
            return f"template {job.template!r} no longer exists"
        path = Path(job.csv_path)
        try:
            total = await asyncio.to_thread(count_rows, path)
        except CsvRejected as exc:
            return f"{exc}; no row was sent"
        except OSError as exc:
            return f"the uploaded file cannot be read: {exc}"
        await self.store.set_total(job.id, total)
        log.info("job_started", total_rows=total, template=job.template)
        reader = await asyncio.to_thread(JobReader, job, template, self.settings, self.intake.narrow)
        try:
            while True:
                await self._wait_for_room(job)
                try:
                    chunk = await asyncio.to_thread(reader.next_chunk, self.settings.JOB_CHUNK_ROWS)
                except CsvRejected as exc:
                    return f"after row {job.rows_done}: {exc}"
                if chunk is None:
                    return None
                await self.intake.accept_job_chunk(
                    self.store, job.id, chunk.notifications, chunk.errors, chunk.last_row, after_row=job.rows_done
                )
                job.rows_done = chunk.last_row
                log.debug("job_progress", rows_done=chunk.last_row, accepted=len(chunk.notifications))
                await asyncio.sleep(0)
        finally:
            with contextlib.suppress(OSError):
                reader.close()
