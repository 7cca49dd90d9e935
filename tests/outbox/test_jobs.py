"""The job store's contract on both backends, and on PostgreSQL which replica resumes which job."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from service.outbox import Outbox
from service.outbox.jobs import DONE, RUNNING, Job, JobTaken, RowError
from tests.outbox.backends import another_job_store, notification


def new_job(tmp_path: Path) -> Job:
    job_id = str(uuid.uuid4())
    csv_path = tmp_path / f"{job_id}.csv"
    csv_path.write_text("email\n")
    return Job(id=job_id, template="welcome", csv_path=str(csv_path), created_at=time.time(), request_id="r1")


async def test_a_chunk_stores_its_mail_errors_and_progress_together(tmp_path: Path, outbox: Outbox) -> None:
    store = outbox.jobs
    job = new_job(tmp_path)
    await store.create(job)
    await store.set_total(job.id, 5)
    await store.add_chunk(
        job.id, [notification(), notification()], [RowError(3, "bad@@x", "not an address")], rows_done=4
    )
    await store.add_chunk(job.id, [notification()], [RowError(6, None, "no email")], rows_done=6)

    stored = await store.get(job.id)
    assert stored is not None
    assert (stored.status, stored.total_rows, stored.rows_done, stored.accepted, stored.rejected) == (
        RUNNING,
        5,
        6,
        3,
        2,
    )
    assert (stored.queued, stored.sent, stored.failed) == (3, 0, 0)
    assert stored.errors == [RowError(3, "bad@@x", "not an address"), RowError(6, None, "no email")]
    assert await store.errors_after(job.id, 3, 10) == [RowError(6, None, "no email")]
    assert await store.waiting(job.id) == 3
    # A job's mail waits in the same queue as the rest: the queue limit counts it.
    assert await outbox.notifications.count_unsent() == 3
    # After a restart (the store closed, a new one opened), the job is resumed.
    await store.close()
    store = another_job_store(outbox)
    assert [j.id for j in await store.running()] == [job.id]

    [first, *_] = await outbox.notifications.claim(3, time.time())
    await outbox.notifications.mark_sent(first.id, smtp_reply="250 ok", refused=[], now=time.time())
    assert await outbox.notifications.count_unsent() == 2
    assert await store.waiting(job.id) == 2

    await store.finish(job.id, status=DONE, reason=None, now=time.time())
    finished = await store.get(job.id)
    assert finished is not None
    assert (finished.status, finished.sent) == (DONE, 1)
    assert await store.running() == []
    assert await store.get("missing") is None
    await store.close()


async def test_the_latest_jobs_come_newest_first_with_their_mail_counted(tmp_path: Path, outbox: Outbox) -> None:
    store = outbox.jobs
    older, newer, newest = (new_job(tmp_path) for _ in range(3))
    for offset, job in enumerate((older, newer, newest)):
        job.created_at = 1000.0 + offset
        await store.create(job)
    await store.add_chunk(newer.id, [notification(), notification()], [RowError(4, None, "no email")], rows_done=4)
    [claimed, _] = await outbox.notifications.claim(2, time.time())
    await outbox.notifications.mark_sent(claimed.id, smtp_reply="250 ok", refused=[], now=time.time())

    latest = await store.latest(2)

    assert [job.id for job in latest] == [newest.id, newer.id]
    assert (latest[1].accepted, latest[1].rejected, latest[1].queued, latest[1].sent) == (2, 1, 1, 1)
    # A list, not a job's page: its rejected rows are not read.
    assert latest[1].errors == []


async def test_a_job_is_resumed_by_one_replica_only(tmp_path: Path, replicas: tuple[Outbox, Outbox]) -> None:
    first, second = (outbox.jobs for outbox in replicas)
    try:
        running = new_job(tmp_path)
        await first.create(running)
        # The replica that took the upload runs it: another one starting now leaves it alone.
        assert await second.running() == []
        elsewhere = new_job(tmp_path)
        Path(elsewhere.csv_path).unlink()
        await first.create(elsewhere)
        await first.close()  # the first replica dies: its locks go with its connection
        # The job whose file is on this disk is resumed here; the other one's upload is not here.
        assert [job.id for job in await second.running()] == [running.id]
        assert await second.running() == [], "a job was handed out twice"
    finally:
        await first.close()
        await second.close()


async def test_two_runners_of_one_job_never_both_store_a_chunk(tmp_path: Path, outbox: Outbox) -> None:
    # A replica that lost its hold on a job (its lock connection dropped) and the one that took it over both
    # start from the same progress: the first chunk stored wins, the other runner writes nothing and stops.
    store = outbox.jobs
    job = new_job(tmp_path)
    await store.create(job)
    created = await store.get(job.id)
    assert created is not None
    start = created.rows_done

    await store.add_chunk(job.id, [notification()], [], rows_done=start + 1, after_row=start)
    with pytest.raises(JobTaken):
        await store.add_chunk(job.id, [notification()], [RowError(2, None, "x")], rows_done=start + 1, after_row=start)

    stored = await store.get(job.id)
    assert stored is not None
    assert (stored.rows_done, stored.accepted, stored.rejected) == (start + 1, 1, 0)
    assert await outbox.notifications.count_unsent() == 1
