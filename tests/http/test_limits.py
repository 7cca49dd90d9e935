"""What the service refuses to take: bodies over MAX_BODY_BYTES (413, before parsing) and notifications past
QUEUE_LIMIT unsent (429 with Retry-After)."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

from service.http.limits import nests_deeper_than
from tests.conftest import MAIL, make_settings, running
from tests.smtp_sink import SmtpSink, free_port

# -- MAX_BODY_BYTES ---------------------------------------------------------------------------------------


def padded_mail(size: int) -> bytes:
    body = json.dumps({**MAIL, "text": ""}).encode()
    return json.dumps({**MAIL, "text": "x" * (size - len(body))}).encode()


async def test_a_declared_content_length_over_the_limit_is_413_before_reading(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, MAX_BODY_BYTES=2048)
    async with running(settings) as service:
        fits = await service.client.post(
            "/v1/notifications", content=padded_mail(2048), headers={"Content-Type": "application/json"}
        )
        too_big = await service.client.post(
            "/v1/notifications",
            content=padded_mail(2049),
            headers={"Content-Type": "application/json", "X-Request-ID": "big-1"},
        )

    assert fits.status_code == 202, fits.text
    assert too_big.status_code == 413
    assert "MAX_BODY_BYTES=2048" in too_big.json()["detail"]
    assert too_big.headers["x-request-id"] == "big-1"


async def test_a_chunked_body_is_counted_as_it_streams(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, MAX_BODY_BYTES=4096)
    sent_chunks = 0

    async def endless() -> AsyncIterator[bytes]:
        # Far more than the limit, without a Content-Length: only counting can stop it.
        nonlocal sent_chunks
        yield b'{"to": ["ada@example.com"], "subject": "s", "text": "'
        for _ in range(10_000):
            sent_chunks += 1
            yield b"x" * 1024

    async with running(settings) as service:
        response = await service.client.post(
            "/v1/notifications", content=endless(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413
        assert "MAX_BODY_BYTES=4096" in response.json()["detail"]
        assert sent_chunks < 10, "the body was read on after the limit"
        listing = await service.client.get("/v1/notifications")
    assert listing.json()["items"] == []


# -- QUEUE_LIMIT -----------------------------------------------------------------------------------------


def unsent_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM notifications WHERE status IN ('queued', 'sending')").fetchone()[0])


async def test_a_flood_past_the_queue_limit_is_refused_and_nothing_beyond_it_is_taken(tmp_path: Path) -> None:
    # The SMTP server is down, so nothing drains: exactly QUEUE_LIMIT may be taken, however many arrive at once.
    settings = make_settings(tmp_path, free_port(), QUEUE_LIMIT=20, RETRY_BASE_SECONDS=30, RETRY_MAX_SECONDS=60)
    async with running(settings) as service:
        responses = await asyncio.gather(*(service.post(**MAIL) for _ in range(120)))
        tutorial = await service.client.post("/send-notification/ada@example.com")
        unsent = await service.app.state.outbox.notifications.count_unsent()

    codes = [r.status_code for r in responses]
    assert codes.count(202) == 20
    assert codes.count(429) == 100
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) > 0
    assert "QUEUE_LIMIT is 20" in refused.json()["detail"]
    assert tutorial.status_code == 429
    assert unsent == 20
    assert unsent_rows(settings.OUTBOX_PATH) == 20


async def test_room_comes_back_as_mail_is_sent(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, QUEUE_LIMIT=2)
    async with running(settings) as service:
        smtp_sink.handler.delay_seconds = 0.3
        first = [await service.post(**MAIL) for _ in range(2)]
        full = await service.post(**MAIL)
        for response in first:
            await service.wait_for_status(response.json()["id"], "sent")
        smtp_sink.handler.delay_seconds = 0
        again = await service.post(**MAIL)
        await service.wait_for_status(again.json()["id"], "sent")
        unsent = await service.app.state.outbox.notifications.count_unsent()

    assert [r.status_code for r in first] == [202, 202]
    assert full.status_code == 429
    assert again.status_code == 202
    assert unsent == 0


async def test_the_unsent_count_survives_a_restart_and_follows_every_transition(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    settings = make_settings(tmp_path, smtp_sink.port, MAX_ATTEMPTS=1)
    smtp_sink.handler.data_replies.extend(["550 5.1.1 no such mailbox"])
    async with running(settings) as service:
        failed = await service.post(**MAIL)
        await service.wait_for_status(failed.json()["id"], "failed")
        sent = await service.post(**MAIL)
        await service.wait_for_status(sent.json()["id"], "sent")
        outbox = service.app.state.outbox.notifications
        assert await outbox.count_unsent() == 0
        retried = await service.client.post(f"/v1/notifications/{failed.json()['id']}/retry")
        assert retried.status_code == 202
        await service.wait_for_status(failed.json()["id"], "sent")
        assert await outbox.count_unsent() == 0

    # Mail that waits when the process stops is counted again at the next start.
    down = make_settings(tmp_path, free_port(), RETRY_BASE_SECONDS=30, RETRY_MAX_SECONDS=60)
    async with running(down) as service:
        for _ in range(3):
            await service.post(**MAIL)
    async with running(down) as service:
        assert await service.app.state.outbox.notifications.count_unsent() == 3 == unsent_rows(down.OUTBOX_PATH)


# -- MAX_JSON_DEPTH (through the app: tests/http/test_hostile_input.py) -----------------------------------


def depth_of(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    return 0


def random_json(rng: random.Random, level: int) -> object:
    # Strings full of brackets, quotes and backslashes: only the structure may count.
    strings = ['a\\"[{', "\\", '"]}"', "x", '\\"[[', "}}]]", "[" * 40]
    roll = rng.random()
    if level > 45 or roll < 0.3:
        return rng.choice([*strings, 1, None])
    if roll < 0.65:
        return [random_json(rng, level + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(strings) + str(i): random_json(rng, level + 1) for i in range(rng.randint(0, 3))}


def test_the_nesting_read_from_the_bytes_is_the_parsed_depth() -> None:
    rng = random.Random(14)
    for _ in range(1000):
        value = random_json(rng, 0)
        text = json.dumps(value).encode()
        for limit in (1, 2, 4, 8, 16, 32):
            assert nests_deeper_than(text, limit) == (depth_of(value) > limit), (limit, text[:300])


def test_brackets_opened_and_never_closed_are_deep_where_the_body_stops() -> None:
    assert nests_deeper_than(b"[" * 33, 32)
    assert nests_deeper_than(b'{"a": ' * 100_000, 32)
    assert not nests_deeper_than(b"[" * 32, 32)
    # Hidden by closing brackets inside strings: still found.
    assert nests_deeper_than(b"[" * 30 + b'"' + b"]" * 30 + b'",' + b"[" * 30 + b"]" * 60, 32)
