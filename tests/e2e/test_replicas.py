"""Several uvicorn processes on one PostgreSQL outbox: each mail sent once, a killed replica's mail not lost,
replicas starting together migrating once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from service.delivery.dispatcher import CLAIMS_PER_WORKER
from service.outbox import read_migrations
from tests.e2e.processes import children_of, outside_the_checkout
from tests.postgres import latest_migration
from tests.smtp_sink import SmtpSink, free_port

SEND_CONCURRENCY = 4


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@contextmanager
def replicas(count: int, tmp_path: Path, postgres_url: str, smtp_port: int, **env: str) -> Iterator[list[Replica]]:
    """Start `count` uvicorn processes at the same moment; stop (or kill) them all afterwards."""
    started: list[Replica] = []
    try:
        for number in range(count):
            port = free_port()
            log_path = tmp_path / f"replica-{number}.log"
            process_env = {
                **os.environ,
                "OUTBOX_URL": postgres_url,
                "OUTBOX_PATH": str(tmp_path / f"unused-{number}.sqlite3"),
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(smtp_port),
                "SEND_CONCURRENCY": str(SEND_CONCURRENCY),
                "SHUTDOWN_GRACE_SECONDS": "2",
                "LOG_FORMAT": "json",
                **env,
            }
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    # A long keep-alive: on a loaded machine the client may reuse a pooled connection just as
                    # uvicorn's 5 s idle timeout closes it, a ReadError that says nothing about the service.
                    [
                        *(sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"),
                        *("--port", str(port), "--timeout-keep-alive", "120"),
                    ],
                    cwd=tmp_path,
                    env=outside_the_checkout(process_env),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            started.append(Replica(process, f"http://127.0.0.1:{port}", log_path))
        deadline = time.monotonic() + 90  # a generous deadline, not a wait: CI machines are noisy
        for replica in started:
            while True:
                try:
                    if httpx.get(f"{replica.base_url}/health/live", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if replica.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"replica did not start:\n{replica.log_path.read_text()}")
                time.sleep(0.05)
        yield started
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        for replica in started:
            try:
                replica.process.wait(15)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait(5)


async def post_round_robin(running: list[Replica], count: int) -> list[str]:
    """POST `count` notifications spread over the replicas in turn; returns their ids."""
    clients = [httpx.AsyncClient(base_url=replica.base_url, timeout=30) for replica in running]
    gate = asyncio.Semaphore(24)

    async def post(number: int) -> str:
        async with gate:
            response = await clients[number % len(clients)].post(
                "/v1/notifications",
                json={"to": [f"user{number}@example.com"], "subject": f"mail {number}", "text": "hi"},
            )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    try:
        return list(await asyncio.gather(*(post(number) for number in range(count))))
    finally:
        for client in clients:
            await client.aclose()


def message_ids(sink: SmtpSink) -> Counter[str]:
    return Counter(str(mail.message["Message-ID"]) for mail in list(sink.received))


async def wait_for_distinct(sink: SmtpSink, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(message_ids(sink)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"SMTP sink got {len(message_ids(sink))} distinct mails, expected {count}")
        await asyncio.sleep(0.1)


async def statuses(postgres_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(postgres_url)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM notifications GROUP BY status")
    finally:
        await conn.close()
    return {row["status"]: row["n"] for row in rows}


async def test_three_replicas_deliver_every_notification_exactly_once(
    tmp_path: Path, postgres_url: str, smtp_sink: SmtpSink
) -> None:
    total = 2000
    with replicas(3, tmp_path, postgres_url, smtp_sink.port, LOG_LEVEL="WARNING") as running:
        await post_round_robin(running, total)
        await wait_for_distinct(smtp_sink, total, timeout=90)

        # Every row is `sent`, so nothing can be claimed (and sent) again: the count below is final.
        assert await statuses(postgres_url) == {"sent": total}
        assert len(smtp_sink.received) == total
        assert max(message_ids(smtp_sink).values()) == 1


async def test_a_replica_killed_mid_delivery_loses_nothing_and_its_claims_are_taken_over(
    tmp_path: Path, postgres_url: str, smtp_sink: SmtpSink
) -> None:
    total = 200
    # A slow server keeps every worker busy, so the victim holds claims (in flight and queued) when it dies.
    smtp_sink.handler.delay_seconds = 0.25
    # A send deadline far above the server's delay: no send times out (and is retried, a duplicate of its own)
    # even on a busy machine, so every duplicate below comes from the kill. A short lease for a short test.
    env = {"LEASE_SECONDS": "5", "SEND_TIMEOUT_SECONDS": "2", "LOG_LEVEL": "WARNING"}
    with replicas(3, tmp_path, postgres_url, smtp_sink.port, **env) as running:
        ids = await post_round_robin(running, total)
        victim = running[0]
        # The claims are its dispatcher's: in a process of its own, which dies with it.
        claimants = [victim.process.pid, *children_of(victim.process.pid)]
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)

        conn = await asyncpg.connect(postgres_url)
        try:
            held = await conn.fetch(
                "SELECT id, message_id FROM notifications WHERE status = 'sending'"
                " AND split_part(claimed_by, ':', 2)::int = ANY($1::int[])",
                claimants,
            )
            assert held, "the victim held no claims when it died: the test proves nothing"
            assert len(smtp_sink.received) < total

            await wait_for_distinct(smtp_sink, total, timeout=60)
            taken_over = await conn.fetch(
                "SELECT status, attempts, claimed_by FROM notifications WHERE id = ANY($1::text[])",
                [row["id"] for row in held],
            )
        finally:
            await conn.close()

        assert await statuses(postgres_url) == {"sent": total}
        assert len(ids) == total
        # Its claims were claimed again (attempts + 1) and sent by the survivors.
        assert all(row["status"] == "sent" and row["attempts"] >= 2 for row in taken_over)
        assert not any(int(row["claimed_by"].split(":")[1]) in claimants for row in taken_over)
        # Only what the victim held can have arrived twice: its in-flight window, never more.
        duplicated = {mid for mid, n in message_ids(smtp_sink).items() if n > 1}
        assert duplicated <= {row["message_id"] for row in held}
        # What it held: the sends in flight and the claims queued behind them, never more.
        assert len(held) <= (CLAIMS_PER_WORKER + 1) * SEND_CONCURRENCY


async def test_two_replicas_starting_together_on_an_empty_database_migrate_once(
    tmp_path: Path, postgres_url: str, smtp_sink: SmtpSink
) -> None:
    latest = latest_migration("postgres")
    with replicas(2, tmp_path, postgres_url, smtp_sink.port) as running:
        readiness = [httpx.get(f"{replica.base_url}/health/ready", timeout=5).json() for replica in running]
        migrated = [e for replica in running for e in replica.events() if e["event"] == "outbox_schema_migrated"]

    conn = await asyncpg.connect(postgres_url)
    try:
        applied = [row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")]
    finally:
        await conn.close()
    # The migrations' own numbers (one may be missing while a branch that adds it is unmerged).
    numbers = [number for number, _, _ in read_migrations("postgres")]
    assert sorted(applied) == numbers
    assert sorted(e["version"] for e in migrated) == numbers
    assert [r["schema_version"] for r in readiness] == [latest, latest]
    assert all(r["checks"]["outbox"] == "pass" for r in readiness)
