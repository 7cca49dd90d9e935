"""Idempotency-Key on POST /v1/notifications: a retry gets the first answer again and sends no second mail."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from service.config import Settings
from tests.conftest import MAIL, make_settings, running
from tests.smtp_sink import SmtpSink


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def rows(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(settings.OUTBOX_PATH) as db:
        return db.execute(sql).fetchall()


async def test_same_key_and_body_replays_the_first_answer_and_sends_one_mail(
    settings: Settings, smtp_sink: SmtpSink
) -> None:
    async with running(settings) as service:
        first = await service.client.post("/v1/notifications", json=MAIL, headers=keyed("order-1"))
        # The same content in another key order and spacing is the same request.
        again = await service.client.post(
            "/v1/notifications",
            content=b'{"text": "Hi Ada",  "subject": "Hello", "to": ["ada@example.com"]}',
            headers={**keyed("order-1"), "Content-Type": "application/json"},
        )
        await service.wait_for_status(first.json()["id"], "sent")
        third = await service.client.post("/v1/notifications", json=MAIL, headers=keyed("order-1"))

    assert first.status_code == again.status_code == third.status_code == 202
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    # Even after the mail went out, the replay is the first answer (queued), not today's status.
    assert third.json() == first.json()
    assert len(smtp_sink.received) == 1
    assert rows(settings, "SELECT count(*) FROM notifications") == [(1,)]


async def test_same_key_with_another_body_is_422_and_adds_nothing(settings: Settings) -> None:
    async with running(settings) as service:
        first = await service.client.post("/v1/notifications", json=MAIL, headers=keyed("k-2"))
        other = await service.client.post("/v1/notifications", json={**MAIL, "subject": "Other"}, headers=keyed("k-2"))

    assert first.status_code == 202
    assert other.status_code == 422
    [error] = other.json()["detail"]
    assert error["loc"] == ["header", "Idempotency-Key"]
    assert "different request" in error["msg"]
    assert rows(settings, "SELECT count(*) FROM notifications") == [(1,)]


async def test_different_keys_are_different_notifications(settings: Settings) -> None:
    async with running(settings) as service:
        a = await service.client.post("/v1/notifications", json=MAIL, headers=keyed("a"))
        b = await service.client.post("/v1/notifications", json=MAIL, headers=keyed("b"))
        c = await service.post(**MAIL)

    assert len({a.json()["id"], b.json()["id"], c.json()["id"]}) == 3


async def test_a_key_still_in_progress_is_409(settings: Settings) -> None:
    async with running(settings) as service:
        # Hold the outbox's write lock: the first request waits inside its commit, key in hand.
        blocker = sqlite3.connect(settings.OUTBOX_PATH, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            first = asyncio.create_task(service.client.post("/v1/notifications", json=MAIL, headers=keyed("slow")))
            idempotency = service.app.state.idempotency
            deadline = time.monotonic() + 5
            while not idempotency._in_flight:
                assert time.monotonic() < deadline, "the first request never reached its commit"
                await asyncio.sleep(0.01)
            second = await service.client.post("/v1/notifications", json=MAIL, headers=keyed("slow"))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        first_response = await asyncio.wait_for(first, 10)
        after = await service.client.post("/v1/notifications", json=MAIL, headers=keyed("slow"))

    assert second.status_code == 409
    assert "still being handled" in second.json()["detail"]
    assert first_response.status_code == 202
    assert after.headers["idempotent-replayed"] == "true"
    assert after.json()["id"] == first_response.json()["id"]


async def test_a_refused_request_does_not_use_up_its_key(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, MAX_RECIPIENTS=1)
    async with running(settings) as service:
        too_many = {**MAIL, "cc": ["grace@example.com"]}
        refused = await service.client.post("/v1/notifications", json=too_many, headers=keyed("k"))
        accepted = await service.client.post("/v1/notifications", json=MAIL, headers=keyed("k"))

    assert refused.status_code == 422
    assert accepted.status_code == 202
    assert "idempotent-replayed" not in accepted.headers


async def test_expired_keys_are_forgotten_and_swept(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, IDEMPOTENCY_TTL_HOURS=0.3 / 3600)
    async with running(settings) as service:
        first = await service.client.post("/v1/notifications", json=MAIL, headers=keyed("short-lived"))
        # The sweeper runs every TTL here: wait until it has removed the row.
        deadline = time.monotonic() + 10
        while rows(settings, "SELECT count(*) FROM idempotency_keys") != [(0,)]:
            assert time.monotonic() < deadline, "the expired key was never swept"
            await asyncio.sleep(0.05)
        again = await service.client.post("/v1/notifications", json=MAIL, headers=keyed("short-lived"))
        await smtp_sink.wait_for(2)

    assert again.status_code == 202
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]


async def test_keys_are_scoped_per_api_key(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, API_KEYS="alice-key-0123456789,bob-key-0123456789ab")
    async with running(settings) as service:
        alice = {"Authorization": "Bearer alice-key-0123456789", **keyed("shared")}
        bob = {"Authorization": "Bearer bob-key-0123456789ab", **keyed("shared")}
        a = await service.client.post("/v1/notifications", json=MAIL, headers=alice)
        b = await service.client.post("/v1/notifications", json={**MAIL, "subject": "Bob's"}, headers=bob)
        a_again = await service.client.post("/v1/notifications", json=MAIL, headers=alice)

    assert a.status_code == b.status_code == a_again.status_code == 202
    assert a.json()["id"] != b.json()["id"]
    assert "idempotent-replayed" not in b.headers
    assert a_again.json()["id"] == a.json()["id"]
    scopes = rows(settings, "SELECT scope FROM idempotency_keys")
    assert len(scopes) == 2
    assert all("key" not in str(scope) for (scope,) in scopes), "the API key itself must not be stored"


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "naïve"])
async def test_malformed_keys_are_422(settings: Settings, key: str) -> None:
    async with running(settings) as service:
        response = await service.client.post(
            "/v1/notifications", json=MAIL, headers=[(b"Idempotency-Key", key.encode())]
        )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


# The outbox's side (key and notifications in one transaction) is tested on both backends in
# tests/outbox/test_idempotency.py.


async def test_parallel_retries_of_a_finished_request_all_replay_it(settings: Settings, smtp_sink: SmtpSink) -> None:
    async with running(settings) as service:
        first = await service.client.post("/v1/notifications", json=MAIL, headers=keyed("done-1"))
        await service.wait_for_status(first.json()["id"], "sent")

        # Each retry's lookup awaits the outbox: the others arrive while it is under way.
        retries = await asyncio.gather(
            *(service.client.post("/v1/notifications", json=MAIL, headers=keyed("done-1")) for _ in range(50))
        )

    assert [r.status_code for r in retries] == [202] * 50, {r.status_code: r.text for r in retries}
    assert all(r.headers["idempotent-replayed"] == "true" for r in retries)
    assert {r.json()["id"] for r in retries} == {first.json()["id"]}
    assert len(smtp_sink.received) == 1


async def test_the_same_request_on_two_replicas_at_once_is_one_notification_and_two_answers(
    tmp_path: Path, smtp_sink: SmtpSink, postgres_url: str
) -> None:
    # Both look the key up before either commits: the one whose commit finds the key taken answers with the
    # stored answer, not 409 (the other request has finished by then).
    settings = make_settings(tmp_path, smtp_sink.port, OUTBOX_URL=postgres_url)
    rounds = 30
    async with running(settings) as first, running(settings) as second:
        answers = []
        for number in range(rounds):
            key = keyed(f"both-{number}")
            answers.append(
                await asyncio.gather(
                    first.client.post("/v1/notifications", json=MAIL, headers=key),
                    second.client.post("/v1/notifications", json=MAIL, headers=key),
                )
            )
        await smtp_sink.wait_for(rounds, timeout=30)

    for on_first, on_second in answers:
        assert (on_first.status_code, on_second.status_code) == (202, 202), (on_first.text, on_second.text)
        assert on_first.json()["id"] == on_second.json()["id"]
        assert [r.headers.get("idempotent-replayed") for r in (on_first, on_second)].count("true") == 1
    assert len(smtp_sink.received) == rounds
