"""CSV mail-merge jobs with the outbox on PostgreSQL: a job cut by a restart resumes without duplicates."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg

from tests.conftest import make_settings, running
from tests.http.test_jobs import upload, wait_for_job
from tests.jobs_csv import good_addresses, people_csv
from tests.smtp_sink import SmtpSink


async def test_a_job_on_postgresql_cut_by_a_restart_resumes_without_duplicates(
    tmp_path: Path, smtp_sink: SmtpSink, postgres_url: str
) -> None:
    rows = 300
    good = good_addresses(rows)
    settings = make_settings(
        tmp_path, smtp_sink.port, OUTBOX_URL=postgres_url, SEND_CONCURRENCY=8, JOB_CHUNK_ROWS=2, JOBS_DIR=tmp_path / "j"
    )
    async with running(settings) as service:
        job_id = (await upload(service, people_csv(rows))).json()["id"]
        deadline = time.monotonic() + 30
        while (await service.client.get(f"/v1/jobs/{job_id}")).json()["rows_done"] < 30:
            assert time.monotonic() < deadline, "the job made no progress"
            await asyncio.sleep(0.005)

    db = await asyncpg.connect(postgres_url)
    try:
        status, rows_done = await db.fetchrow("SELECT status, rows_done FROM jobs WHERE id = $1", job_id)
    finally:
        await db.close()
    assert status == "running"
    assert rows_done < rows + 1, "the job finished before the restart: nothing was resumed"

    async with running(settings) as service:
        done = await wait_for_job(service, job_id, "done", "failed")
        assert done["status"] == "done", done
        assert (done["accepted"], done["rejected"]) == (len(good), rows - len(good))
        await smtp_sink.wait_for(len(good), timeout=60)
        received = [r.rcpt_tos[0] for r in smtp_sink.received]
        assert len(received) == len(set(received)), "a row was sent twice"
        assert set(received) == good
        # The stats read the kept counts in the database: every sent row is counted once.
        deadline = time.monotonic() + 30
        while (stats := (await service.client.get("/v1/stats")).json())["counts"]["sent"] < len(good):
            assert time.monotonic() < deadline, stats
            await asyncio.sleep(0.05)

    db = await asyncpg.connect(postgres_url)
    try:
        notifications = await db.fetchval("SELECT count(*) FROM notifications WHERE job_id = $1", job_id)
    finally:
        await db.close()
    assert notifications == len(good)
    assert stats["counts"]["sent"] == len(good), stats


async def test_a_nul_in_a_row_is_a_rejected_row_not_a_job_stuck_on_postgresql(
    tmp_path: Path, smtp_sink: SmtpSink, postgres_url: str
) -> None:
    # PostgreSQL cannot store a NUL: the rejected row's email, written as it came, failed every write of the
    # chunk, and the job retried it for ever as "outbox unavailable".
    settings = make_settings(tmp_path, smtp_sink.port, OUTBOX_URL=postgres_url, JOBS_DIR=tmp_path / "j")
    content = b"email,first_name,login_url\r\nnul\x00here@example.com,Eve,u\r\nok@example.com,Ada,u\x00\r\n"
    async with running(settings) as service:
        job_id = (await upload(service, content)).json()["id"]
        done = await wait_for_job(service, job_id, "done", "failed", timeout=20)

    assert (done["status"], done["accepted"], done["rejected"]) == ("done", 0, 2), done
    assert done["errors"][0]["row"] == 2
    assert "NUL" in done["errors"][1]["reason"]
