"""What a 202 promises, tested by breaking the process: SIGKILL and SIGTERM under load, with the SMTP server up
and down. The SMTP server runs in the test process, so it outlives every kill and counts what really arrived.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos_smtp import ChaosHandler, Odds
from tests.e2e.processes import (
    Load,
    ServiceProcess,
    alive,
    message_ids,
    outbox_statuses,
    service_env,
    start_service,
    wait_until,
)
from tests.smtp_sink import Received, SmtpSink

CONCURRENCY = 4


def promised(accepted: list[dict[str, Any]]) -> set[str]:
    return {notification["message_id"] for notification in accepted}


def missing(accepted: list[dict[str, Any]], *received: list[Received]) -> set[str]:
    arrived = set()
    for mails in received:
        arrived |= set(message_ids(mails))
    return promised(accepted) - arrived


def duplicates(*received: list[Received]) -> int:
    counts = message_ids(mail for mails in received for mail in mails)
    return sum(count - 1 for count in counts.values())


async def load_until(
    service: ServiceProcess, load: Load, ready: Callable[[], bool], describe: Callable[[], str]
) -> None:
    """Wait, under load, for the moment to break something."""
    await wait_until(lambda: ready() or not load.running, 60, describe)
    assert load.running, f"posting stopped early:\n{service.output()[-3000:]}"


async def test_sigkill_mid_delivery_loses_nothing_and_repeats_at_most_the_in_flight_sends(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # A slow server, so that at any moment CONCURRENCY sends are in flight and a backlog waits behind them.
    smtp_sink.handler.delay_seconds = 0.05
    outbox = tmp_path / "outbox.sqlite3"
    env = service_env(outbox, smtp_sink.port, SEND_CONCURRENCY=CONCURRENCY)

    first = await start_service(env, tmp_path / "first.log")
    try:
        async with Load(first.base_url) as load:
            await load_until(
                first,
                load,
                lambda: (
                    len(smtp_sink.received) >= 10 and len(load.accepted) - len(smtp_sink.received) >= 3 * CONCURRENCY
                ),
                lambda: f"no backlog: {len(load.accepted)} accepted, {len(smtp_sink.received)} delivered",
            )
            dispatcher = first.children()
            first.kill()
            delivered_at_kill = len(smtp_sink.received)
    finally:
        first.stop()
    accepted = load.accepted
    # The dispatcher's own process died with it (PR_SET_PDEATHSIG): nothing goes on sending from a dead service.
    assert dispatcher
    await wait_until(lambda: not any(alive(pid) for pid in dispatcher), 5, lambda: f"still alive: {dispatcher}")

    at_kill = outbox_statuses(outbox)
    # The kill really landed mid-delivery: sends were in flight, and accepted mail was still undelivered.
    assert at_kill.get("sending", 0) > 0, at_kill
    assert missing(accepted, smtp_sink.received)
    assert delivered_at_kill > 0

    second = await start_service(env, tmp_path / "second.log")
    try:
        await wait_until(
            lambda: not missing(accepted, smtp_sink.received),
            60,
            lambda: f"lost after the restart: {sorted(missing(accepted, smtp_sink.received))[:5]}",
        )
        await wait_until(
            lambda: set(outbox_statuses(outbox)) == {"sent"},
            30,
            lambda: f"not all recorded as sent: {outbox_statuses(outbox)}",
        )
    finally:
        second.terminate(timeout=30)

    assert len(smtp_sink.received) > delivered_at_kill
    assert duplicates(smtp_sink.received) <= CONCURRENCY
    [recovered] = [e for e in second.events() if e["event"] == "notifications_recovered"]
    assert recovered["count"] == at_kill["sending"]


async def test_after_a_sigkill_nothing_stays_sending_once_the_service_runs_again(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Every worker hangs on a server that never answers DATA: the kill finds them all mid-send.
    smtp_sink.handler.stall_next_data = 1000
    smtp_sink.handler.stall_seconds = 60
    outbox = tmp_path / "outbox.sqlite3"
    env = service_env(outbox, smtp_sink.port, SEND_CONCURRENCY=CONCURRENCY, SEND_TIMEOUT_SECONDS=60)

    first = await start_service(env, tmp_path / "first.log")
    try:
        async with Load(first.base_url) as load:
            await load_until(
                first,
                load,
                lambda: (
                    len(load.accepted) >= 5 * CONCURRENCY and outbox_statuses(outbox).get("sending", 0) >= CONCURRENCY
                ),
                lambda: f"sends did not hang: {outbox_statuses(outbox)}",
            )
        first.kill()
    finally:
        first.stop()
    at_kill = outbox_statuses(outbox)
    assert at_kill.get("sending", 0) >= CONCURRENCY, at_kill

    smtp_sink.handler.stall_next_data = 0
    second = await start_service(env, tmp_path / "second.log")
    try:
        await wait_until(
            lambda: set(outbox_statuses(outbox)) == {"sent"},
            60,
            lambda: f"left behind after the restart: {outbox_statuses(outbox)}",
        )
    finally:
        second.terminate(timeout=30)

    assert not missing(load.accepted, smtp_sink.received)
    # The stalled sends never got a reply, so the server took nothing twice.
    assert duplicates(smtp_sink.received) == 0
    [recovered] = [e for e in second.events() if e["event"] == "notifications_recovered"]
    assert recovered["count"] == at_kill["sending"]


async def test_sigkill_while_the_smtp_server_is_down_loses_nothing(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.delay_seconds = 0.05
    outbox = tmp_path / "outbox.sqlite3"
    env = service_env(outbox, smtp_sink.port, SEND_CONCURRENCY=CONCURRENCY)

    first = await start_service(env, tmp_path / "first.log")
    try:
        async with Load(first.base_url) as load:
            await load_until(
                first,
                load,
                lambda: len(smtp_sink.received) >= 10,
                lambda: f"nothing delivered: {len(load.accepted)} accepted",
            )
            await asyncio.to_thread(smtp_sink.stop)
            accepted_while_up = len(load.accepted)
            # The service keeps accepting while the server is gone; those 202s are promises too.
            await load_until(
                first,
                load,
                lambda: len(load.accepted) >= accepted_while_up + 20,
                lambda: f"stopped accepting while SMTP was down: {len(load.accepted)}",
            )
            first.kill()
    finally:
        first.stop()
    accepted = load.accepted
    assert missing(accepted, smtp_sink.received)
    assert outbox_statuses(outbox).get("queued", 0) > 0

    back = SmtpSink(port=smtp_sink.port).start()
    second = await start_service(env, tmp_path / "second.log")
    try:
        await wait_until(
            lambda: not missing(accepted, smtp_sink.received, back.received),
            60,
            lambda: f"lost: {len(missing(accepted, smtp_sink.received, back.received))} of {len(accepted)}",
        )
    finally:
        second.terminate(timeout=30)
        back.stop()

    assert back.received, "the restarted service delivered the backlog"
    assert duplicates(smtp_sink.received, back.received) <= CONCURRENCY


async def test_sigterm_under_load_finishes_in_flight_sends_exits_within_the_grace_and_loses_nothing(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    smtp_sink.handler.delay_seconds = 0.2
    grace = 3.0
    outbox = tmp_path / "outbox.sqlite3"
    env = service_env(outbox, smtp_sink.port, SEND_CONCURRENCY=CONCURRENCY, SHUTDOWN_GRACE_SECONDS=grace)

    first = await start_service(env, tmp_path / "first.log")
    try:
        async with Load(first.base_url) as load:
            await load_until(
                first,
                load,
                lambda: (
                    len(smtp_sink.received) >= 4 and len(load.accepted) - len(smtp_sink.received) >= 3 * CONCURRENCY
                ),
                lambda: f"no backlog: {len(load.accepted)} accepted, {len(smtp_sink.received)} delivered",
            )
            # A generous bound, not a timing: the grace plus uvicorn's own shutdown and the interpreter's exit.
            status = await asyncio.to_thread(first.terminate, grace + 15)
    finally:
        first.stop()
    accepted = load.accepted

    # uvicorn re-raises the signal it caught after a graceful shutdown.
    assert status in (0, -signal.SIGTERM)
    names = [e["event"] for e in first.events()]
    assert "service_stopped" in names
    assert "dispatcher_sends_interrupted" not in names
    at_exit = outbox_statuses(outbox)
    # In-flight sends finished and were recorded; nothing was left half-done.
    assert "sending" not in at_exit, at_exit
    assert at_exit.get("sent", 0) == len(smtp_sink.received)
    assert at_exit.get("queued", 0) > 0, "the shutdown left a backlog for the next start"

    second = await start_service(env, tmp_path / "second.log")
    try:
        await wait_until(
            lambda: not missing(accepted, smtp_sink.received),
            60,
            lambda: f"lost: {len(missing(accepted, smtp_sink.received))} of {len(accepted)}",
        )
    finally:
        second.terminate(timeout=30)

    # A graceful stop repeats nothing.
    assert duplicates(smtp_sink.received) == 0


async def test_sigterm_with_sends_stuck_past_the_grace_exits_and_puts_them_back_in_the_queue(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Every worker hangs on a server that never answers DATA, far longer than the grace.
    smtp_sink.handler.stall_next_data = 1000
    smtp_sink.handler.stall_seconds = 60
    grace = 1.0
    outbox = tmp_path / "outbox.sqlite3"
    env = service_env(
        outbox, smtp_sink.port, SEND_CONCURRENCY=CONCURRENCY, SEND_TIMEOUT_SECONDS=60, SHUTDOWN_GRACE_SECONDS=grace
    )

    first = await start_service(env, tmp_path / "first.log")
    try:
        async with Load(first.base_url) as load:
            await load_until(
                first,
                load,
                lambda: (
                    len(load.accepted) >= 3 * CONCURRENCY and outbox_statuses(outbox).get("sending", 0) >= CONCURRENCY
                ),
                lambda: f"sends did not hang: {outbox_statuses(outbox)}",
            )
            # A generous bound, not a timing: the grace, not the 60 s the server would take.
            status = await asyncio.to_thread(first.terminate, grace + 15)
    finally:
        first.stop()

    assert status in (0, -signal.SIGTERM)
    [interrupted] = [e for e in first.events() if e["event"] == "dispatcher_sends_interrupted"]
    assert interrupted["count"] == CONCURRENCY
    at_exit = outbox_statuses(outbox)
    assert "sending" not in at_exit, at_exit

    smtp_sink.handler.stall_next_data = 0
    second = await start_service(env, tmp_path / "second.log")
    try:
        await wait_until(
            lambda: not missing(load.accepted, smtp_sink.received),
            60,
            lambda: f"lost: {len(missing(load.accepted, smtp_sink.received))} of {len(load.accepted)}",
        )
    finally:
        second.terminate(timeout=30)
    assert duplicates(smtp_sink.received) == 0


@pytest.fixture
def chaos_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.handler = ChaosHandler(7, rcpt=Odds(stall=0.01), data=Odds(stall=0.01), stall_seconds=5)
    sink.start()
    yield sink
    sink.stop()


async def test_sigkill_against_a_chaotic_server_every_accepted_notification_ends_sent_or_failed_with_a_reason(
    tmp_path: Path, chaos_sink: SmtpSink
) -> None:
    chaos = chaos_sink.handler
    assert isinstance(chaos, ChaosHandler)
    outbox = tmp_path / "outbox.sqlite3"
    env = service_env(
        outbox,
        chaos_sink.port,
        SEND_CONCURRENCY=CONCURRENCY,
        SEND_TIMEOUT_SECONDS=2,
        MAX_ATTEMPTS=6,
        RETRY_BASE_SECONDS=0.02,
        RETRY_MAX_SECONDS=0.1,
    )

    first = await start_service(env, tmp_path / "first.log")
    try:
        async with Load(first.base_url) as load:
            await load_until(
                first,
                load,
                lambda: len(chaos.received) >= 50 and len(load.accepted) - len(chaos.received) >= 3 * CONCURRENCY,
                lambda: f"no backlog: {len(load.accepted)} accepted, {len(chaos.received)} delivered",
            )
            first.kill()
    finally:
        first.stop()
    assert missing(load.accepted, chaos.received)

    second = await start_service(env, tmp_path / "second.log")
    try:
        await wait_until(
            lambda: set(outbox_statuses(outbox)) <= {"sent", "failed"},
            90,
            lambda: f"not settled: {outbox_statuses(outbox)}",
        )
    finally:
        second.terminate(timeout=30)

    with sqlite3.connect(outbox) as db:
        rows = {row[0]: row[1:] for row in db.execute("SELECT id, status, message_id, last_error FROM notifications")}
    arrived = set(message_ids(chaos.received))
    for notification in load.accepted:
        status, message_id, last_error = rows[notification["id"]]
        if status == "sent":
            assert message_id in arrived, notification["id"]
        else:
            assert status == "failed", (notification["id"], status)
            assert last_error, notification["id"]
    assert chaos.faults, "the server misbehaved"
