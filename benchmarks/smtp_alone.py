"""The ceiling for delivery: aiosmtplib alone, N persistent connections, no HTTP, no disk.

Builds each mail with the same headers as the service, the plain stdlib way (`EmailMessage()`, the default
policy, as aiosmtplib's docs do), sends COUNT of them, prints one line of JSON with its CPU time and peak RSS.

    python -m benchmarks.smtp_alone SMTP_PORT COUNT [CONNECTIONS] [--prebuilt]

`--prebuilt` builds every mail (to bytes) before the clock starts and sends them with `sendmail`: what is left
is the SMTP conversation alone, the ceiling of any client on this sink.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib
import uvloop

MAIL_FROM = "notifications@example.com"


def build_plain_message(notification_id: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = MAIL_FROM
    message["To"] = "ada@example.com"
    message["Subject"] = "Benchmark"
    message["Date"] = formatdate(time.time(), usegmt=True)
    message["Message-ID"] = f"<{notification_id}@example.com>"
    message.set_content("Hello from the benchmark.")
    return message


def peak_rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def send_all(port: int, count: int, connections: int) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for _ in range(count):
        queue.put_nowait(str(uuid.uuid4()))

    async def work() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as smtp:
            while not queue.empty():
                notification_id = queue.get_nowait()
                await smtp.send_message(build_plain_message(notification_id), sender=MAIL_FROM)

    await asyncio.gather(*(work() for _ in range(connections)))


async def send_prebuilt(port: int, mails: list[bytes], connections: int) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for mail in mails:
        queue.put_nowait(mail)

    async def work() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as smtp:
            while not queue.empty():
                await smtp.sendmail(MAIL_FROM, ["ada@example.com"], queue.get_nowait())

    await asyncio.gather(*(work() for _ in range(connections)))


def main() -> None:
    args = [arg for arg in sys.argv[1:] if arg != "--prebuilt"]
    port, count = int(args[0]), int(args[1])
    connections = int(args[2]) if len(args) > 2 else 8
    if "--prebuilt" in sys.argv:
        mails = [bytes(build_plain_message(str(uuid.uuid4()))) for _ in range(count)]
        started, cpu = time.perf_counter(), time.process_time()
        uvloop.run(send_prebuilt(port, mails, connections))
    else:
        started, cpu = time.perf_counter(), time.process_time()
        uvloop.run(send_all(port, count, connections))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"sent": count, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
