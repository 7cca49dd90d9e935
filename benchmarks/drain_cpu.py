"""The dispatcher's CPU per mail, in-process: COUNT due notifications put in a fresh outbox, then the ordinary
Dispatcher (SEND_CONCURRENCY=8) empties it into the counting sink. Prints one line of JSON on stderr.

    python -m benchmarks.drain_cpu [COUNT] [--postgres URL] > /dev/null   # the log lines go to stdout

CPU, not wall time, is what to compare between two versions of the code on a busy machine: the process' CPU
(the event loop and the outbox's thread) from the first claim until the outbox has nothing left to send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvloop

from benchmarks.bench import Sink
from service.config import Settings
from service.delivery.dispatcher import Dispatcher
from service.logging import configure_logging
from service.metrics import Metrics
from service.outbox import open_outbox


async def drain(settings: Settings) -> dict[str, float]:
    # As the dispatcher's own process opens it (service/delivery/worker.py), without a lock: nothing else does.
    outbox = open_outbox(settings, dispatcher_process=True)
    await outbox.open()
    try:
        total = await outbox.notifications.count_unsent()
        dispatcher = Dispatcher(outbox.notifications, settings, metrics=Metrics(settings.metric_tags()))
        started, cpu, threads_before = time.perf_counter(), time.process_time(), thread_cpu()
        await dispatcher.start()
        while await outbox.notifications.count_unsent():  # noqa: ASYNC110 - the outbox is what is watched
            await asyncio.sleep(0.05)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        threads = thread_cpu()
        await dispatcher.stop()
    finally:
        await outbox.close()
    return {
        "mails": total,
        "mails_per_s": round(total / seconds),
        "cpu_ms_per_mail": round(1000 * cpu_seconds / total, 3),
        # By thread (the event loop's, the outbox's): where the CPU went.
        "threads_ms_per_mail": {
            name: round(1000 * (t - threads_before.get(name, 0.0)) / total, 3) for name, t in threads.items()
        },
    }


def thread_cpu() -> dict[str, float]:
    """Each live thread's CPU seconds so far (Linux), by its name."""
    ticks = os.sysconf("SC_CLK_TCK")
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    result: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        name = names.get(int(task.name), "other").split("_")[0]
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        result[name] = result.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int, nargs="?", default=10_000)
    parser.add_argument("--postgres", metavar="URL", help="an empty PostgreSQL database instead of a SQLite file")
    args = parser.parse_args()
    from benchmarks.fill_outbox import fill

    sink = Sink()
    try:
        with tempfile.TemporaryDirectory(prefix="drain-cpu-") as workdir:
            os.environ.update(
                SMTP_HOST="127.0.0.1",
                SMTP_PORT=str(sink.port),
                OUTBOX_PATH=str(Path(workdir) / "outbox.sqlite3"),
                SEND_CONCURRENCY="8",
                LOG_FORMAT="json",
                QUEUE_LIMIT=str(args.count + 1),
            )
            if args.postgres:
                os.environ["OUTBOX_URL"] = args.postgres
            settings = Settings()
            configure_logging(settings)
            asyncio.run(fill(args.count))
            result = uvloop.run(drain(settings))
            result["sink"] = sink.get()["count"]
    finally:
        sink.stop()
    print(json.dumps(result), file=sys.stderr)


if __name__ == "__main__":
    main()
