"""What one accept costs in CPU inside the process, with no sockets and no load generator: the ASGI app is called
directly, `--concurrency` requests at a time, and the process' CPU time (every thread: the outbox's too) is
divided by the requests. The least of `--repeats` runs is printed beside the median: on a shared machine a busy
neighbour only ever adds time, so the least is the steadiest figure to compare two versions of the code by.

    .venv/bin/python -m benchmarks.accept_cpu [--requests 2000] [--repeats 7] [--systems bare,durable,service]

The service runs as it ships, its dispatcher in a child process that is not counted and is kept quiet: its
SMTP server takes connections and never greets, so the child waits instead of sending (or of retrying, which
would take the other core and lock the outbox file). Log lines go to /dev/null. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.bench import BODY, PATH

_KEEP: list[socket.socket] = []

_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]


async def _post(app: Any) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": _HEADERS,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    body_sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": BODY.encode(), "more_body": False}
        await asyncio.Future()  # the client never goes away
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _run(app: Any, requests: int, concurrency: int) -> float:
    """CPU seconds per request for `requests` accepts, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> int:
        async with gate:
            return await _post(app)

    started = time.process_time()
    statuses = await asyncio.gather(*(one() for _ in range(requests)))
    spent = time.process_time() - started
    if set(statuses) != {202}:
        raise RuntimeError(f"not every request was accepted: {sorted(set(statuses))}")
    return spent / requests


@contextlib.contextmanager
def _stdout_to_devnull() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _app(system: str, folder: Path) -> Any:
    if system == "bare":
        return importlib.import_module("benchmarks.bare_app").app
    os.environ["OUTBOX_PATH"] = str(folder / f"{system}.sqlite3")
    if system == "durable":
        return importlib.import_module("benchmarks.durable_app").app
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # never accepted: the kernel completes the handshakes, nobody ever says 220
    _KEEP.append(silent)
    os.environ.update(
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(silent.getsockname()[1]),
        SMTP_TIMEOUT_SECONDS="600",
        SEND_TIMEOUT_SECONDS="600",
        SHUTDOWN_GRACE_SECONDS="0",
        LOG_FORMAT="json",
    )
    from service.main import create_app

    return create_app()


async def _measure(app: Any, args: argparse.Namespace) -> list[float]:
    lifespan: Callable[[Any], Any] = app.router.lifespan_context
    async with lifespan(app):
        await _run(app, args.requests // 4, args.concurrency)  # warm-up
        return [await _run(app, args.requests, args.concurrency) for _ in range(args.repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--systems", type=lambda s: s.split(","), default=["bare", "durable", "service"])
    args = parser.parse_args()
    if len(args.systems) > 1:
        # Each in a fresh interpreter: one measured after another in the same process measured 40 % higher.
        for system in args.systems:
            command = [sys.executable, "-m", "benchmarks.accept_cpu", "--systems", system]
            command += ["--requests", str(args.requests), "--repeats", str(args.repeats)]
            subprocess.run([*command, "--concurrency", str(args.concurrency)], check=True)
        return
    import uvloop  # what uvicorn picks

    [system] = args.systems
    with tempfile.TemporaryDirectory(prefix="accept-cpu-") as folder, _stdout_to_devnull():
        values = uvloop.run(_measure(_app(system, Path(folder)), args))
    micro = [v * 1e6 for v in values]
    print(
        f"{system:<8} µs of CPU per accept: least {min(micro):6.1f}  median {statistics.median(micro):6.1f}"
        f"  ({' '.join(f'{v:.0f}' for v in micro)})",
        flush=True,
    )


if __name__ == "__main__":
    main()
