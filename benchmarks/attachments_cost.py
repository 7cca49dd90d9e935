"""What attachments cost the queue: a claim of `--rows` notifications and a list page, on an outbox whose rows carry
no attachment and on one where every `--every`th row carries `--mib` MiB, through the real store. Claims and
listings never read the bytes (they live in a table of their own), so both should cost the same. Then what one
send with such an attachment costs: reading its bytes back and building the mail.

    python -m benchmarks.attachments_cost [--rows 1000] [--every 25] [--mib 5] [--rounds 5] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.delivery.mime import build_mail_bytes
from service.outbox import AttachmentInfo, Notification, Outbox
from service.outbox.postgres import postgres_outbox
from service.outbox.sqlite import sqlite_outbox


def notifications(rows: int, every: int, blob: bytes | None) -> list[Notification]:
    made = []
    for number in range(rows):
        notification_id = str(uuid.uuid4())
        attached = blob is not None and number % every == 0
        made.append(
            Notification(
                id=notification_id,
                to=["ada@example.com"],
                subject=f"Receipt {number}",
                text="Thank you for your order.",
                html='<p><img src="cid:logo"> Thank you for your order.</p>',
                message_id=f"<{notification_id}@example.com>",
                created_at=time.time(),
                attachments=[AttachmentInfo("receipt.pdf", "application/pdf", len(blob))] if attached and blob else [],
                attachment_data=[blob] if attached and blob else [],
            )
        )
    return made


async def median_ms(work: Callable[[], Awaitable[object]], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def measure(outbox: Outbox, args: argparse.Namespace, blob: bytes | None) -> dict[str, float]:
    store = outbox.notifications
    batch = notifications(args.rows, args.every, blob)
    # In slices: one add() of 200 MiB would be one transaction of that size.
    for start in range(0, len(batch), args.every):
        await store.add(batch[start : start + args.every])

    async def claim_and_release() -> None:
        claimed = await store.claim(args.rows, time.time() + 1)
        assert len(claimed) == args.rows, len(claimed)
        await store.release([n.id for n in claimed])

    results = {
        f"claim of {args.rows} (and release)": await median_ms(claim_and_release, args.rounds),
        "list page of 50": await median_ms(lambda: store.page(status=None, limit=50, cursor=None), args.rounds),
        "list page of 500": await median_ms(lambda: store.page(status=None, limit=500, cursor=None), args.rounds),
    }
    if blob is not None:
        attached = batch[0]

        async def read_and_build() -> bytes:
            attached.attachment_data = await store.attachment_data(attached.id)
            return build_mail_bytes(attached, "Notifier <notifier@example.com>")

        results[f"one send's read + build ({args.mib:g} MiB)"] = await median_ms(read_and_build, args.rounds)
    return results


async def run(args: argparse.Namespace) -> None:
    blob = os.urandom(int(args.mib * 1024 * 1024))
    attached_rows = len(range(0, args.rows, args.every))
    print(
        f"{args.rows} queued notifications; 'with': every {args.every}th carries {args.mib:g} MiB"
        f" ({attached_rows * args.mib:g} MiB in all). Median ms of {args.rounds} rounds."
    )
    backends: list[tuple[str, Callable[[Path], Outbox]]] = [("sqlite", lambda path: sqlite_outbox(path))]
    if args.postgres:
        backends.append(("postgres", lambda path: postgres_outbox(args.postgres, lease_seconds=300, pool_size=4)))
    for name, make in backends:
        results: dict[str, dict[str, float]] = {}
        for label, data in (("without", None), ("with", blob)):
            with tempfile.TemporaryDirectory() as folder:
                if name == "postgres":
                    await reset_postgres(args.postgres)
                outbox = make(Path(folder) / "outbox.sqlite3")
                await outbox.open()
                try:
                    results[label] = await measure(outbox, args, data)
                finally:
                    await outbox.close()
        print(f"{name}:")
        print(f"  {'':44} {'without':>9} {'with':>9}")
        for key, value in results["with"].items():
            before = results["without"].get(key)
            print(f"  {key:44} {'' if before is None else f'{before:9.1f}':>9} {value:9.1f}")


async def reset_postgres(url: str) -> None:
    """A fresh schema in the given (throw-away) database: the bench drops every table the outbox made there."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--every", type=int, default=25, help="every Nth row carries the attachment")
    parser.add_argument("--mib", type=float, default=5.0, help="the attachment's size in MiB")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", default=None, help="a THROW-AWAY database's URL: its public schema is dropped")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
