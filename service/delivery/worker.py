"""The dispatcher process' own main: `python -m service.delivery.worker`, started by process.py's handle.

It runs the ordinary Dispatcher on its own connection to the same outbox, woken by bytes on its stdin, and
reports (ready, then its metrics) on the pipe it is given. It dies with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import sys

from service.config import Settings
from service.delivery import ipc
from service.delivery.dispatcher import Dispatcher
from service.logging import configure_logging
from service.metrics import Metrics
from service.outbox import open_outbox

_PR_SET_PDEATHSIG = 1


def _die_with(parent_pid: int) -> None:
    """Linux kills this process the moment its parent dies, as if both were one process."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        # The parent died before the line above: nothing is left to serve.
        os._exit(1)


async def serve(settings: Settings, stdin_fd: int, events_fd: int) -> None:
    loop = asyncio.get_running_loop()
    events, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(events_fd, "wb"))
    outbox = open_outbox(settings, dispatcher_process=True)
    await outbox.open()
    metrics = Metrics(settings.metric_tags())
    dispatcher = Dispatcher(outbox.notifications, settings, metrics=metrics)
    stop = asyncio.Event()
    # Told to stop by its parent only (stdin closed): a SIGTERM or Ctrl-C sent to the whole process group
    # reaches the parent too, whose shutdown then stops this process in order.
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, lambda: None)

    def on_wake() -> None:
        try:
            data = os.read(stdin_fd, 4096)
        except BlockingIOError:
            return
        if data:
            dispatcher.wake()
        else:
            # The parent is stopping (or gone, where PR_SET_PDEATHSIG does not exist): stop in order.
            loop.remove_reader(stdin_fd)
            stop.set()

    try:
        await dispatcher.start()
        os.set_blocking(stdin_fd, False)
        loop.add_reader(stdin_fd, on_wake)
        gc.collect()
        gc.freeze()  # as in the HTTP process (service/main.py): what start made is never collected again
        events.write(ipc.ready_report(os.getpid()))
        while not stop.is_set():
            events.write(ipc.metrics_report(metrics))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ipc.METRICS_EVERY_SECONDS):
                    await stop.wait()
        await dispatcher.stop()
        events.write(ipc.metrics_report(metrics))
    finally:
        await outbox.close()
        events.close()


def main() -> None:
    parent_pid, events_fd = int(sys.argv[1]), int(sys.argv[2])
    _die_with(parent_pid)
    settings = ipc.read_settings(sys.stdin.fileno())
    if settings.DISPATCHER_NICE:
        os.nice(settings.DISPATCHER_NICE)
    configure_logging(settings)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings, sys.stdin.fileno(), events_fd))
    else:
        uvloop.run(serve(settings, sys.stdin.fileno(), events_fd))


if __name__ == "__main__":
    main()
