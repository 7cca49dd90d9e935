"""The ceiling for delivery: aiosmtplib alone, N persistent connections, no HTTP, no disk.

Builds each mail the way the service does, sends COUNT of them, prints one line of JSON with its own peak RSS.

    python -m benchmarks.smtp_alone SMTP_PORT COUNT [CONNECTIONS]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

import aiosmtplib
import uvloop

from service.mailer import build_message
from service.outbox import Notification

MAIL_FROM = "notifications@example.com"


def peak_rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def send_all(port: int, count: int, connections: int) -> None:
    queue: asyncio.Queue[Notification] = asyncio.Queue()
    for _ in range(count):
        notification_id = str(uuid.uuid4())
        queue.put_nowait(
            Notification(
                id=notification_id,
                to=["ada@example.com"],
                subject="Benchmark",
                text="Hello from the benchmark.",
                message_id=f"<{notification_id}@example.com>",
                created_at=time.time(),
            )
        )

    async def work() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as smtp:
            while not queue.empty():
                notification = queue.get_nowait()
                await smtp.send_message(build_message(notification, MAIL_FROM), sender=MAIL_FROM)

    await asyncio.gather(*(work() for _ in range(connections)))


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    connections = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    started, cpu = time.perf_counter(), time.process_time()
    uvloop.run(send_all(port, count, connections))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"sent": count, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
