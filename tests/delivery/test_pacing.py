"""Pacing: SEND_RATE_LIMIT holds the whole instance under the relay's rate, and a throttling reply pauses every
worker (not just the one that got it) for a pause that grows while throttles keep coming.

No test asserts how fast anything went: only lower bounds on spreads and gaps, which slowness cannot break."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import structlog
from structlog.testing import capture_logs

from service.delivery.classify import DeliveryFailed
from service.delivery.pacing import Pacer, throttling_reply
from tests.conftest import MAIL, make_settings, running
from tests.smtp_sink import SmtpSink

THROTTLE = "421 4.7.0 Try again later, closing connection."


@contextmanager
def stamped_events() -> Iterator[list[dict[str, Any]]]:
    """structlog events with their context, each stamped with time.monotonic(), the sink's clock."""

    def stamp(_logger: object, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event["at"] = time.monotonic()
        return event

    with capture_logs(processors=[structlog.contextvars.merge_contextvars, stamp]) as events:
        yield events


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


def rows(path: Path) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(path) as db:
        return {row[0]: (row[1], row[2]) for row in db.execute("SELECT id, status, attempts FROM notifications")}


async def post_batch(service: Any, count: int) -> list[str]:
    response = await service.client.post("/v1/notifications/batch", json={"notifications": [MAIL] * count})
    assert response.status_code == 202, response.text
    return [item["id"] for item in response.json()["items"]]


async def test_200_mails_at_50_a_second_take_about_4_seconds_at_the_sink(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    # The dispatcher in its own process (the default): the bucket lives there, shared by its 8 workers.
    settings = make_settings(tmp_path, smtp_sink.port, SEND_RATE_LIMIT=50, SEND_CONCURRENCY=8, DISPATCHER_PROCESS=True)
    async with running(settings) as service:
        await post_batch(service, 100)
        await post_batch(service, 100)
        received = await smtp_sink.wait_for(200, timeout=120)

    arrivals = sorted(mail.at for mail in received)
    # 200 turns at 50/s, 5 of them at once: the 200th is handed out 3.9 s after the first. The first mail's own
    # connect may take a moment, hence 3 s; unpaced, the sink takes the 200 in well under a second.
    assert arrivals[-1] - arrivals[0] >= 3.0, arrivals[-1] - arrivals[0]


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


async def test_a_throttling_reply_pauses_every_worker_and_gives_back_what_waited(
    tmp_path: Path, smtp_sink: SmtpSink, outbox_url: str | None
) -> None:
    # The pause backs off like a retry: RETRY_BASE_SECONDS first.
    settings = make_settings(
        tmp_path, smtp_sink.port, SEND_CONCURRENCY=4, RETRY_BASE_SECONDS=1, RETRY_MAX_SECONDS=4, OUTBOX_URL=outbox_url
    )
    smtp_sink.handler.data_replies.append(THROTTLE)
    # Inside running(): create_app() configures structlog, which would undo the capture.
    async with running(settings) as service:
        with stamped_events() as events:
            ids = await post_batch(service, 20)
            await smtp_sink.wait_for(20, timeout=60)
            await wait_until(lambda: any(e["event"] == "sending_resumed" for e in events))
            sent = {notification_id: await service.wait_for_status(notification_id, "sent") for notification_id in ids}

    [throttled] = [e for e in events if e["event"] == "sending_throttled"]
    assert throttled["reply"] == THROTTLE
    assert throttled["pause_seconds"] == 1
    [resumed] = [e for e in events if e["event"] == "sending_resumed"]
    assert resumed["at"] >= throttled["at"] + 1
    # Sends already under way when the pause began (one per other worker at most) go on; no other starts in it.
    # Unpaced, the other 19 mails and the retry would all begin within that second.
    pause_began = throttled["at"]
    began_in_pause = [t for t in smtp_sink.handler.mail_at if pause_began <= t < pause_began + 1]
    assert len(began_in_pause) <= settings.SEND_CONCURRENCY - 1, len(began_in_pause)
    # What waited in the queue went back unsent and came again later as its first attempt; only the throttled
    # one spent an attempt on the throttle.
    assert sorted(status["attempts"] for status in sent.values()) == [1] * 19 + [2]
    # An event of the instance: no notification's id on it.
    assert "notification_id" not in throttled
    assert "notification_id" not in resumed


async def test_stopping_during_a_long_pause_does_not_wait_it_out_and_strands_nothing(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # A pause of a minute, longer than `running`'s 30 s shutdown deadline: waiting it out would fail the test.
    settings = make_settings(tmp_path, smtp_sink.port, SEND_CONCURRENCY=4, RETRY_BASE_SECONDS=60, RETRY_MAX_SECONDS=60)
    smtp_sink.handler.data_replies.append(THROTTLE)
    async with running(settings) as service:
        with stamped_events() as events:
            await post_batch(service, 10)
            await wait_until(lambda: any(e["event"] == "sending_throttled" for e in events))

    statuses = rows(settings.OUTBOX_PATH)
    assert {status for status, _ in statuses.values()} <= {"queued", "sent"}
    assert any(status == "queued" for status, _ in statuses.values())


async def test_throttles_that_keep_coming_double_the_pause_and_a_calm_spell_starts_it_over() -> None:
    pacer = Pacer(0, first_pause=0.05, max_pause=0.2, calm_seconds=0.3)
    throttle = aiosmtplib.SMTPDataError(454, "Throttling failure: Maximum sending rate exceeded")
    with stamped_events() as events:
        for _ in range(4):
            started = time.perf_counter()
            pacer.after_failure(throttle, started)
            # A send that began before this pause is part of the burst it answers: no longer pause.
            pacer.after_failure(throttle, started - 0.001)
            assert pacer.paused
            await wait_until(lambda: not pacer.paused)
        calm_from = time.perf_counter()
        await wait_until(lambda: time.perf_counter() > calm_from + 0.3)
        pacer.after_failure(throttle, time.perf_counter())
        await wait_until(lambda: sum(e["event"] == "sending_resumed" for e in events) == 5)

    throttled = [e for e in events if e["event"] == "sending_throttled"]
    assert [(e["pause_seconds"], e["throttles"]) for e in throttled] == [
        (0.05, 1),
        (0.1, 2),
        (0.2, 3),
        (0.2, 4),
        (0.05, 1),
    ]
    assert throttled[0]["reply"] == "454 Throttling failure: Maximum sending rate exceeded"
    assert [e["event"] for e in events] == ["sending_throttled", "sending_resumed"] * 5


async def test_a_pause_over_by_the_clock_ends_with_its_event_even_when_its_timer_is_late() -> None:
    # The pause ends by perf_counter; its timer runs when the loop gets to it. A throttle in between (here the loop
    # is blocked past the pause, as a busy machine does it) still logs the first pause's end before the second's start.
    pacer = Pacer(0, first_pause=0.05, max_pause=0.2, calm_seconds=30)
    throttle = aiosmtplib.SMTPDataError(454, "Throttling failure: Maximum sending rate exceeded")
    with stamped_events() as events:
        pacer.after_failure(throttle, time.perf_counter())
        paused_until = time.perf_counter() + 0.05
        while time.perf_counter() <= paused_until:
            time.sleep(0.01)  # the event loop blocked: the resume timer cannot run
        assert not pacer.paused
        pacer.after_failure(throttle, time.perf_counter())
        assert pacer.paused
        await wait_until(lambda: sum(e["event"] == "sending_resumed" for e in events) == 2)

    assert [e["event"] for e in events] == ["sending_throttled", "sending_resumed"] * 2
    assert [e["paused_seconds"] for e in events if e["event"] == "sending_resumed"] == [0.05, 0.1]


async def test_a_claimer_waiting_out_a_pause_is_released_at_once_by_close() -> None:
    pacer = Pacer(0, first_pause=60, max_pause=60)
    pacer.after_failure(aiosmtplib.SMTPSenderRefused(421, "4.7.0 Try again later", "a@example.com"), 0.0)
    waiting = asyncio.create_task(pacer.wait_for_turns(4))
    await asyncio.sleep(0)
    assert not waiting.done()
    pacer.close()
    assert await asyncio.wait_for(waiting, timeout=10) == 0


async def test_with_a_rate_the_claimer_is_offered_no_more_turns_than_the_bucket_holds() -> None:
    pacer = Pacer(50)
    offered = await pacer.wait_for_turns(8)
    assert offered == 5  # a tenth of a second's worth
    await pacer.use_turns(offered)
    before = time.perf_counter()
    assert await pacer.wait_for_turns(8) >= 1
    # The bucket was full: the next turn comes one 50th of a second later, never sooner.
    assert time.perf_counter() - before >= 0.02 * 0.9
    unlimited = Pacer(0)
    assert await unlimited.wait_for_turns(8) == 8


def refused(*codes: int) -> aiosmtplib.SMTPRecipientsRefused:
    return aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(code, "busy", f"r{n}@example.com") for n, code in enumerate(codes)]
    )


@pytest.mark.parametrize(
    ("exc", "throttling"),
    [
        (aiosmtplib.SMTPDataError(421, "4.7.0 Try again later"), True),  # Gmail
        (aiosmtplib.SMTPDataError(454, "Throttling failure: Maximum sending rate exceeded"), True),  # Amazon SES
        (aiosmtplib.SMTPSenderRefused(451, "4.7.500 Server busy", "a@example.com"), True),  # for the whole mail
        (aiosmtplib.SMTPDataError(450, "4.2.1 mailbox busy"), False),
        (aiosmtplib.SMTPDataError(550, "5.7.1 rejected"), False),
        (refused(451), False),  # greylisting one recipient says nothing about our rate
        (refused(550, 421), True),
        (aiosmtplib.SMTPServerDisconnected("gone"), False),
        (TimeoutError(), False),
        (None, False),
    ],
)
def test_which_replies_count_as_throttling(exc: BaseException | None, throttling: bool) -> None:
    assert (throttling_reply(exc) is not None) is throttling
    # The dispatcher hands over what its DeliveryFailed was raised from.
    failure = DeliveryFailed("x", transient=True)
    failure.__cause__ = exc
    assert (throttling_reply(failure) is not None) is throttling
