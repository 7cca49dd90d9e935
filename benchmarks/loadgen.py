"""An async HTTP/1.1 load generator in its own process, for when wrk is not installed and for `--burst`
(an exact number of requests, which wrk cannot do).

Keep-alive connections, one request in flight on each, the request bytes built once. Prints one line of JSON:
completed, ok (2xx), errors, seconds, p50_ms, p99_ms.

    python -m benchmarks.loadgen URL[,URL...] BODY_JSON --connections 50 (--duration 10 | --requests 100000)

With several URLs (replicas), the connections are spread over them round-robin, like a load balancer would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import uvloop


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def target(url: str, body: bytes) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    return host, port, request


async def run(
    urls: str, body: bytes, connections: int, duration: float | None, requests: int | None
) -> dict[str, float]:
    targets = [target(url, body) for url in urls.split(",")]
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    remaining = [requests if requests is not None else -1]
    deadline = time.perf_counter() + duration if duration is not None else float("inf")

    def take() -> bool:
        if remaining[0] == 0 or time.perf_counter() >= deadline:
            return False
        remaining[0] -= 1
        return True

    async def client(number: int) -> None:
        host, port, request = targets[number % len(targets)]
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while take():
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                latencies.append(time.perf_counter() - sent)
                counts["ok" if head[9:10] == b"2" else "errors"] += 1
        except (OSError, asyncio.IncompleteReadError):
            counts["errors"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(connections)))
    seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "completed": len(latencies),
        "ok": counts["ok"],
        "errors": counts["errors"],
        "seconds": seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("body")
    parser.add_argument("--connections", type=int, default=50)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--duration", type=float)
    group.add_argument("--requests", type=int)
    args = parser.parse_args()
    result = uvloop.run(run(args.url, args.body.encode(), args.connections, args.duration, args.requests))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
