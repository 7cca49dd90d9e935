"""The dispatcher in a process of its own (DISPATCHER_PROCESS): delivery gets a core, HTTP only accepts. This
is the parent's side: the handle the app uses as its dispatcher, and the supervisor that keeps a child running.

The app's lifespan starts `python -m service.delivery.worker`, hands it the settings on its stdin and from
then on wakes it with a byte on the same pipe whenever something was accepted; closing that pipe stops it
(the messages: ipc.py). The child runs the ordinary Dispatcher on its own connection to the same outbox, niced
(DISPATCHER_NICE) so that answering requests comes first when the cores are busy, and reports back on a second
pipe: once when it is ready, then its metrics twice a second for the parent's /metrics. It dies with its parent
(PR_SET_PDEATHSIG) and holds the parent's lock on a SQLite outbox (inherited), so a crash of the service is a
crash of both and the next start recovers the outbox exactly as it does for one process. If the child alone
dies, the parent starts another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import structlog

from service.config import Settings
from service.delivery import ipc
from service.metrics import Metrics
from service.outbox import Outbox

log = structlog.get_logger("service.delivery.dispatcher")

# A child that has not reported for this long is stuck (its event loop blocked, the process stopped): not
# running, as far as /health/ready goes, though it still exists.
SILENT_SECONDS = 10.0
START_TIMEOUT_SECONDS = 30.0
# After the child died on its own: wait this long before the next start, doubling while it keeps dying early.
RESTART_DELAY_SECONDS = (0.5, 30.0)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class DispatcherProcess:
    """The parent's handle: what main.py uses of a Dispatcher (start, stop) and what the routes and intake see
    of one (handle.DispatcherHandle: running, wake, notify)."""

    def __init__(self, outbox: Outbox, settings: Settings, *, metrics: Metrics) -> None:
        self.settings = settings
        # Whatever the outbox locked (a SQLite file) stays locked while the child lives, even past our exit.
        self._inherited = tuple(fd for fd in [outbox.database.lock_fd] if fd is not None)
        self._mirror = ipc.MetricsMirror.of(metrics)
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._wake_pending = False
        self._stopping = False
        self._heard_at = 0.0
        self.pid: int | None = None

    async def start(self) -> None:
        events = await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(events), name="dispatcher-process")

    async def _spawn(self) -> asyncio.StreamReader:
        """Start the child and wait until it says it is ready; raise if it dies or stays silent instead."""
        read_fd, write_fd = os.pipe()
        try:
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])),
            }
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service.delivery.worker",
                str(os.getpid()),
                str(write_fd),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(write_fd, *self._inherited),
                env=env,
            )
        finally:
            os.close(write_fd)
        try:
            loop = asyncio.get_running_loop()
            events = asyncio.StreamReader(limit=2**20)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(events), os.fdopen(read_fd, "rb"))
            assert process.stdin is not None
            process.stdin.write(ipc.settings_payload(self.settings))
            try:
                async with asyncio.timeout(START_TIMEOUT_SECONDS):
                    line = await events.readline()
            except TimeoutError:
                line = b""
            if not ipc.is_ready_report(line):
                raise RuntimeError("the dispatcher process did not start")
        except BaseException:
            # Not ready, or the start was cancelled (a shutdown): no child may be left running unwatched.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        self._process = process
        self.pid = process.pid
        self._heard_at = time.monotonic()
        log.info("dispatcher_process_started", pid=process.pid)
        return events

    async def _supervise(self, events: asyncio.StreamReader) -> None:
        """Take the child's reports until it exits; start another if it exits without being asked to."""
        delay = RESTART_DELAY_SECONDS[0]
        while True:
            started = time.monotonic()
            while line := await events.readline():
                self._heard_at = time.monotonic()
                self._mirror.take(line)
            assert self._process is not None
            status = await self._process.wait()
            if self._stopping:
                return
            log.error("dispatcher_process_exited", pid=self._process.pid, status=status, restart_in_seconds=delay)
            await asyncio.sleep(delay)
            delay = (
                RESTART_DELAY_SECONDS[0]
                if time.monotonic() - started > 60
                else min(delay * 2, RESTART_DELAY_SECONDS[1])
            )
            while not self._stopping:
                try:
                    events = await self._spawn()
                    break
                except Exception as exc:
                    log.error("dispatcher_process_start_failed", error=str(exc), restart_in_seconds=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RESTART_DELAY_SECONDS[1])
            else:
                return

    @property
    def running(self) -> bool:
        """Alive and reporting: its metrics arrive every ipc.METRICS_EVERY_SECONDS while its event loop turns."""
        return (
            self._process is not None
            and self._process.returncode is None
            and not self._stopping
            and time.monotonic() - self._heard_at < SILENT_SECONDS
        )

    async def notify(self, notification_id: str) -> None:
        """A notification was just accepted (the route's background task): wake the child."""
        self.wake()

    def wake(self) -> None:
        """One byte on the child's stdin per turn of the event loop, however many requests were accepted in it."""
        if not self._wake_pending:
            self._wake_pending = True
            asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        process = self._process
        if process is None or process.stdin is None or process.returncode is not None:
            return
        transport = process.stdin.transport
        # A byte still unread in the pipe's buffer wakes the child as well as two would.
        if not transport.is_closing() and transport.get_write_buffer_size() == 0:
            process.stdin.write(ipc.WAKE)

    async def stop(self) -> None:
        """Close the child's stdin: it stops claiming, lets in-flight sends finish within the grace, and exits."""
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                async with asyncio.timeout(self.settings.SHUTDOWN_GRACE_SECONDS + 10):
                    await process.wait()
            except TimeoutError:
                log.error("dispatcher_process_killed", pid=process.pid, reason="did not stop within the grace")
                process.kill()
                await process.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        log.info("dispatcher_process_stopped", status=process.returncode if process else None)
