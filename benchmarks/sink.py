"""A counting SMTP sink in its own process: aiosmtpd on uvloop, a handler that only counts.

A second port answers `get` (the count, the first and last arrival times) and `reset`, one line of JSON each,
so the benchmark can read the sink without sharing its CPU.

    python -m benchmarks.sink SMTP_PORT CONTROL_PORT
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

import uvloop
from aiosmtpd.smtp import SMTP


class CountingHandler:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None

    async def handle_DATA(self, server, session, envelope):
        now = time.time()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1
        return "250 OK"


async def serve(smtp_port: int, control_port: int) -> None:
    handler = CountingHandler()
    loop = asyncio.get_running_loop()
    # decode_data=False: the sink must cost as little per mail as possible; it never looks at the content.
    smtp_server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.local", decode_data=False), "127.0.0.1", smtp_port
    )

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        command = (await reader.readline()).decode().strip()
        if command == "reset":
            handler.reset()
        writer.write(json.dumps({"count": handler.count, "first": handler.first, "last": handler.last}).encode())
        writer.write(b"\n")
        await writer.drain()
        writer.close()

    control_server = await asyncio.start_server(control, "127.0.0.1", control_port)
    print("sink ready", flush=True)
    async with smtp_server, control_server:
        await asyncio.Event().wait()


def main() -> None:
    # aiosmtpd logs every command at INFO: at thousands of mails a second that would be the bottleneck.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    main()
