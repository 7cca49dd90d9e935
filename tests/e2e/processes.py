"""The service as a real process: start uvicorn on a free port, wait until it serves, post to it in a loop.

Shared by the end-to-end tests so that each of them reads as what it breaks, not how it starts things.
The process writes its (JSON) log to a file, never to a pipe: a pipe nobody reads fills up and blocks it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from service.config import Settings
from tests.smtp_sink import Received, free_port

ROOT = Path(__file__).resolve().parents[2]
# Cheaper than parsing every mail each time a test polls what has arrived.
_MESSAGE_ID = re.compile(rb"^Message-ID: *(<[^>]*>)", re.MULTILINE | re.IGNORECASE)


def service_env(outbox_path: Path, smtp_port: int, **overrides: Any) -> dict[str, str]:
    """The environment of one service process; overrides are Settings names, e.g. SEND_CONCURRENCY=4."""
    values: dict[str, Any] = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": smtp_port,
        "SMTP_TIMEOUT_SECONDS": 2,
        "SEND_TIMEOUT_SECONDS": 5,
        "OUTBOX_PATH": outbox_path,
        "RETRY_BASE_SECONDS": 0.05,
        "RETRY_MAX_SECONDS": 0.5,
        "MAX_ATTEMPTS": 100,
        "LOG_FORMAT": "json",
    }
    values.update(overrides)
    # Nothing from the developer's shell that the service reads (an API_KEYS or OUTBOX_URL exported there
    # would change what these tests see); the rest (PATH, locale) stays.
    inherited = {name: value for name, value in os.environ.items() if name not in Settings.model_fields}
    return {**inherited, **{name: str(value) for name, value in values.items()}}


def outside_the_checkout(env: dict[str, str]) -> dict[str, str]:
    """For a service process started in a folder of the test's own rather than in the checkout: Settings reads
    a `.env` from the working directory, and a developer's own (API_KEYS, OUTBOX_URL) would change what the
    tests see. The code is found through PYTHONPATH, the templates by their full path."""
    return {"TEMPLATES_DIR": str(ROOT / "config" / "templates"), **env, "PYTHONPATH": str(ROOT)}


def children_of(pid: int) -> list[int]:
    """A process' children: a service's dispatcher runs in one (DISPATCHER_PROCESS, the default)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text(encoding="ascii")
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return False
    # A zombie has exited; it only waits for its parent to read its status.
    return stat.rpartition(")")[2].split()[0] != "Z"


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    _log_file: IO[bytes] = field(repr=False)

    def events(self) -> list[dict[str, Any]]:
        """The structlog events the process wrote so far (uvicorn's own lines included)."""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def children(self) -> list[int]:
        return children_of(self.process.pid)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash or the OOM killer."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._log_file.close()

    def terminate(self, timeout: float) -> int:
        """SIGTERM and wait for the exit; raises subprocess.TimeoutExpired if it takes longer."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log_file.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self._log_file.close()


async def start_service(env: dict[str, str], log_path: Path, *, timeout: float = 90) -> ServiceProcess:
    """uvicorn in a subprocess on a free port, in the log's folder; returns once /health/live answers."""
    port = free_port()
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        # A long keep-alive: a test's client that waits (a page refreshing, a retry coming due) may reuse a pooled
        # connection just as uvicorn's 5 s idle timeout closes it, a ReadError that says nothing about the service.
        [
            *(sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"),
            *("--port", str(port), "--timeout-keep-alive", "120"),
        ],
        cwd=log_path.parent,
        env=outside_the_checkout(env),
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    service = ServiceProcess(process, f"http://127.0.0.1:{port}", log_path, log_file)
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=service.base_url, timeout=1) as client:
        while True:
            try:
                if (await client.get("/health/live")).status_code == 200:
                    return service
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                service.stop()
                raise AssertionError(f"uvicorn did not start:\n{service.output()}")
            await asyncio.sleep(0.05)


async def post_in_a_loop(
    base_url: str, accepted: list[dict[str, Any]], stop: asyncio.Event, *, senders: int = 4, limit: int = 10_000
) -> None:
    """Post notifications from `senders` concurrent clients until `stop` is set or the service goes away.

    Every 202 body goes into `accepted`: those are the promises the service has to keep. A request that got
    no answer (the process died under it) promised nothing.
    """

    async def send(client: httpx.AsyncClient, sender: int) -> None:
        number = 0
        while not stop.is_set() and len(accepted) < limit:
            number += 1
            body = {"to": [f"user{sender}@example.com"], "subject": f"{sender}-{number}", "text": "load"}
            try:
                response = await client.post("/v1/notifications", json=body)
            except httpx.TransportError:
                return
            if response.status_code != 202:
                return
            accepted.append(response.json())

    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        await asyncio.gather(*(send(client, sender) for sender in range(senders)))


class Load:
    """post_in_a_loop() as a background task: `async with Load(url) as load:` posts until the block ends."""

    def __init__(self, base_url: str, *, senders: int = 4) -> None:
        self.base_url = base_url
        self.senders = senders
        self.accepted: list[dict[str, Any]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(post_in_a_loop(self.base_url, self.accepted, self._stop, senders=self.senders))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._task is not None:
            async with asyncio.timeout(15):
                await self._task


def message_ids(received: Iterable[Received]) -> Counter[str]:
    """How many times the SMTP server took each Message-ID (a retried mail keeps its id)."""
    counts: Counter[str] = Counter()
    for mail in received:
        found = _MESSAGE_ID.search(mail.data)
        counts[found.group(1).decode() if found else "?"] += 1
    return counts


def outbox_statuses(path: Path) -> dict[str, int]:
    """Read the outbox file directly, e.g. right after a kill, while no service has it open."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT status, count(*) FROM notifications GROUP BY status").fetchall())


async def wait_until(condition: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
    """Poll `condition()` until it is true; fail with `describe()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(describe())
        await asyncio.sleep(0.02)
