"""The suppression list end to end against the SMTP sink: a `550 5.1.1` puts the address on the list, the
next notification to it is narrowed (or refused when nobody is left), and DELETE lifts it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MAIL, Service, make_settings, running
from tests.http.test_jobs import upload, wait_for_job
from tests.smtp_sink import SmtpSink

GONE = "gone@example.com"


async def _wait_until_refused(service: Service, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """POST until the 422 of an all-suppressed notification: the bounce reaches the accept path's copy of the
    list within SUPPRESSION_REFRESH_SECONDS."""
    deadline = time.monotonic() + timeout
    while True:
        response = await service.post(**body)
        if response.status_code == 422:
            detail: dict[str, Any] = response.json()["detail"][0]
            return detail
        assert response.status_code == 202, response.text
        if time.monotonic() > deadline:
            raise AssertionError(f"{body['to']} never refused as suppressed")
        await asyncio.sleep(0.05)


# In the dispatcher's own process (the default) the bounce is written there, and the HTTP process' copy of the
# list learns of it from the database.
@pytest.mark.parametrize("dispatcher_process", [False, pytest.param(True, marks=pytest.mark.slow)])
async def test_a_hard_bounce_suppresses_the_address_until_it_is_lifted(
    smtp_sink: SmtpSink, tmp_path: Path, dispatcher_process: bool
) -> None:
    smtp_sink.handler.refuse[GONE] = "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown"
    settings = make_settings(
        tmp_path, smtp_sink.port, SUPPRESSION_REFRESH_SECONDS=0.05, DISPATCHER_PROCESS=dispatcher_process
    )
    async with running(settings) as service:
        first = (await service.post(**{**MAIL, "to": [GONE]})).json()
        failed = await service.wait_for_status(first["id"], "failed")
        assert failed["refused_recipients"][0]["code"] == 550

        listed = (await service.client.get("/v1/suppressions")).json()["items"]
        assert [(s["address"], s["source"], s["suppressing"], s["notification_id"]) for s in listed] == [
            (GONE, "hard_bounce", True, first["id"])
        ]
        assert listed[0]["smtp_reply"].startswith("550 5.1.1")

        # Every recipient suppressed: refused with a 422 that names them, never stored nor sent.
        detail = await _wait_until_refused(service, {**MAIL, "to": [GONE]})
        assert detail["type"] == "suppressed"
        assert GONE in detail["msg"]
        asked = len(smtp_sink.handler.rcpt_asked)

        # Some recipients left: the envelope is narrowed, the suppressed one listed as refused, the headers kept.
        narrowed = await service.post(**{**MAIL, "to": ["ada@example.com"], "cc": [f"Gone <{GONE}>"]})
        assert narrowed.status_code == 202, narrowed.text
        accepted = narrowed.json()
        assert [(r["address"], r["code"]) for r in accepted["refused_recipients"]] == [(GONE, 550)]
        assert accepted["refused_recipients"][0]["message"].startswith("suppressed")
        sent = await service.wait_for_status(accepted["id"], "sent")
        assert [r["address"] for r in sent["refused_recipients"]] == [GONE]
        [mail] = smtp_sink.to("ada@example.com")
        assert mail.rcpt_tos == ["ada@example.com"]
        assert GONE in mail.message["Cc"]
        assert GONE not in smtp_sink.handler.rcpt_asked[asked:]

        # Lifted: the address gets mail again.
        del smtp_sink.handler.refuse[GONE]
        assert (await service.client.delete(f"/v1/suppressions/{GONE}")).status_code == 204
        assert (await service.client.delete(f"/v1/suppressions/{GONE}")).status_code == 404
        again = await service.post(**{**MAIL, "to": [GONE]})
        assert again.status_code == 202, again.text
        assert again.json()["refused_recipients"] == []
        await service.wait_for_status(again.json()["id"], "sent")
        assert len(smtp_sink.to(GONE)) == 1


async def test_with_suppress_on_hard_bounce_false_a_bounce_is_only_recorded(
    smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    smtp_sink.handler.refuse[GONE] = "550 5.1.1 no such user"
    settings = make_settings(tmp_path, smtp_sink.port, SUPPRESS_ON_HARD_BOUNCE=False, SUPPRESSION_REFRESH_SECONDS=0.05)
    async with running(settings) as service:
        first = (await service.post(**{**MAIL, "to": [GONE]})).json()
        await service.wait_for_status(first["id"], "failed")
        [entry] = (await service.client.get("/v1/suppressions")).json()["items"]
        assert (entry["address"], entry["suppressing"]) == (GONE, False)
        # The accept path's copy has caught up with the list (the bounce's version), and still lets it through.
        suppressions = service.app.state.suppressions
        deadline = time.monotonic() + 10
        while suppressions.version != await suppressions.store.version():
            assert time.monotonic() < deadline, "the in-memory list never caught up"
            await asyncio.sleep(0.02)
        second = await service.post(**{**MAIL, "to": [GONE]})
        assert second.status_code == 202
        assert second.json()["refused_recipients"] == []


async def test_an_address_suppressed_by_hand_is_refused_at_once_and_case_matters_only_left_of_the_at(
    service: Service,
) -> None:
    added = await service.client.post("/v1/suppressions", json={"address": "Ada@EXAMPLE.com", "reason": "unsubscribed"})
    assert added.status_code == 201, added.text
    assert (added.json()["address"], added.json()["reason"]) == ("Ada@example.com", "unsubscribed")
    refused = await service.post(**{**MAIL, "to": ["Ada@Example.Com"]})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["type"] == "suppressed"
    # Another local part (case and all) is another mailbox.
    assert (await service.post(**{**MAIL, "to": ["ada@example.com"]})).status_code == 202
    bad = await service.client.post("/v1/suppressions", json={"address": "not an address"})
    assert bad.status_code == 422
    page = (await service.client.get("/v1/suppressions", params={"limit": 1})).json()
    assert [s["address"] for s in page["items"]] == ["Ada@example.com"]
    assert page["next_cursor"] is None


async def test_a_csv_row_to_a_suppressed_address_is_a_rejected_row_and_the_others_go(
    service: Service, smtp_sink: SmtpSink
) -> None:
    added = await service.client.post("/v1/suppressions", json={"address": GONE, "reason": "asked to stop"})
    assert added.status_code == 201, added.text
    csv_body = (
        b"email,first_name,login_url\r\nada@example.com,Ada,https://example.com/a\r\n"
        b"gone@example.com,Gone,https://example.com/g\r\n"
    )
    job_id = (await upload(service, csv_body)).json()["id"]
    job = await wait_for_job(service, job_id, "done")
    assert (job["accepted"], job["rejected"]) == (1, 1)
    [error] = job["errors"]
    assert error["row"] == 3
    assert "suppression list" in error["reason"]
    assert GONE in error["reason"]
    await smtp_sink.wait_for(1)
    assert smtp_sink.to(GONE) == []
