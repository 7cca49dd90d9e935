"""The job runner on its own (no HTTP, no sending): memory stays flat however long the CSV is, and a job
outlives a store that is unreachable for a while."""

from __future__ import annotations

import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from service.config import Settings
from service.delivery.dispatcher import Dispatcher
from service.intake import csv_jobs as jobs
from service.intake.accept import Intake
from service.intake.csv_jobs import JobRunner
from service.intake.templates import load_templates
from service.metrics import Metrics
from service.outbox import JobStore, Outbox, OutboxUnavailable
from service.outbox.jobs import Job
from service.outbox.sqlite import sqlite_outbox
from tests.conftest import make_settings
from tests.jobs_csv import good_addresses, people_csv

ROOT = Path(__file__).resolve().parents[2]


def write_csv(folder: Path, rows: int) -> Path:
    path = folder / f"{rows}.csv"
    path.write_bytes(people_csv(rows))
    return path


def job_runner(outbox: Outbox, settings: Settings) -> JobRunner:
    """A runner whose intake wakes a dispatcher that is never started: the rows are stored, nothing is sent."""
    templates = load_templates(ROOT / "config" / "templates")
    store = outbox.notifications
    return JobRunner(outbox.jobs, Intake(store, Dispatcher(store, settings), Metrics(), settings, templates))


async def run_job(runner: JobRunner, store: JobStore, path: Path) -> Job:
    job = Job(id=str(uuid.uuid4()), template="welcome", csv_path=str(path), created_at=time.time())
    await store.create(job)
    runner.start(job)
    await runner.join(job.id)
    done = await store.get(job.id)
    assert done is not None
    return done


@pytest.mark.slow
async def test_memory_does_not_grow_with_the_csv(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, 9, JOB_CHUNK_ROWS=100, JOB_MAX_QUEUED=0)
    outbox = sqlite_outbox(tmp_path / "outbox.sqlite3")
    await outbox.open()
    store = outbox.jobs
    runner = job_runner(outbox, settings)
    try:
        await run_job(runner, store, write_csv(tmp_path, 200))  # warm-up: imports, caches, compiled regexes
        files = {rows: write_csv(tmp_path, rows) for rows in (300, 3000)}
        peaks = {}
        tracemalloc.start()
        try:
            for rows in (300, 3000):
                tracemalloc.reset_peak()
                baseline = tracemalloc.get_traced_memory()[0]
                job = await run_job(runner, store, files[rows])
                peaks[rows] = tracemalloc.get_traced_memory()[1] - baseline
                assert (job.status, job.accepted) == ("done", len(good_addresses(rows)))
        finally:
            tracemalloc.stop()
    finally:
        await outbox.close()

    print(f"tracemalloc peak above baseline: 300 rows {peaks[300]} B, 3000 rows {peaks[3000]} B")
    # Ten times the rows, about the same peak: the CSV is streamed, one chunk at a time.
    assert peaks[3000] < peaks[300] * 1.5 + 256 * 1024


async def test_a_job_goes_on_after_the_store_was_unreachable_and_adds_each_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "JOB_RETRY_SECONDS", (0.05, 0.1))
    settings = make_settings(tmp_path, 9, JOB_CHUNK_ROWS=10, JOB_MAX_QUEUED=0)
    outbox = sqlite_outbox(tmp_path / "outbox.sqlite3")
    await outbox.open()
    store = outbox.jobs
    add_chunk = store.add_chunk
    calls = 0

    async def flaky_add_chunk(*args, **kwargs):  # type: ignore[no-untyped-def]
        # The third chunk meets a store that cannot be written (twice), then it answers again.
        nonlocal calls
        calls += 1
        if calls in (3, 4):
            raise OutboxUnavailable("disk I/O error")
        return await add_chunk(*args, **kwargs)

    monkeypatch.setattr(store, "add_chunk", flaky_add_chunk)
    runner = job_runner(outbox, settings)
    try:
        job = await run_job(runner, store, write_csv(tmp_path, 50))
        stored = await outbox.notifications.page(status=None, limit=500, cursor=None)
    finally:
        await outbox.close()

    assert (job.status, job.accepted) == ("done", len(good_addresses(50)))
    rows = [n.metadata["job_row"] for n in stored.items]
    assert len(rows) == len(set(rows)) == len(good_addresses(50))


@pytest.mark.parametrize(
    ("content", "where"),
    [
        # A three-byte character across the scan's chunk boundary is fine; the bad byte after it is found.
        (b"a" * (64 * 1024 - 1) + "€".encode() + b"\n\xff", "byte 0xff at byte offset 65539 (line 2)"),
        # A character cut off by the end of the file.
        (b"email\nab\xe2\x82", "byte 0xe2 at byte offset 8 (line 2)"),
        (b"\xef\xbb\xbfemail\n\n\n\xc3(", "byte 0xc3 at byte offset 11 (line 4)"),
    ],
)
def test_a_file_that_is_not_utf8_is_reported_at_its_byte_and_line(tmp_path: Path, content: bytes, where: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)

    with pytest.raises(jobs.CsvRejected) as counted:
        jobs.count_rows(path)
    assert str(counted.value) == f"the file is not UTF-8 text: {where}"
