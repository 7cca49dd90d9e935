"""Screenshots of the activity page and of one notification, for the README: `make screenshots`.

Seeds an outbox with an hour of traffic through the outbox's own interface (steady sends, a short stall, a wave
of failures), starts the real service on it beside the test SMTP sink and photographs the pages in Chromium.
tests/ui/test_screenshots.py runs the same into a temporary folder, so this script cannot rot.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

from service.domain import Refusal
from service.outbox import Notification
from service.outbox.sqlite import sqlite_outbox
from tests.e2e.processes import ROOT, service_env, start_service
from tests.smtp_sink import SmtpSink
from tests.ui.browser import chromium

DOCS = ROOT / "docs"
ACTIVITY_PNG = "ui-activity.png"
NOTIFICATION_PNG = "ui-notification.png"

PEOPLE = [
    "Ada Lovelace <ada@example.com>",
    "grace.hopper@example.org",
    "Alan Turing <alan@example.net>",
    "katherine.johnson@example.com",
    "Linus <linus@example.org>",
    "margaret.hamilton@example.com",
    "Edsger Dijkstra <edsger@example.nl>",
    "barbara.liskov@example.com",
]
SUBJECTS = [
    "Your receipt for order #{n}",
    "Reset your password",
    "Welcome to Acme, {first}",
    "Your invoice for March is ready",
    "Someone signed in from a new device",
    "Your export has finished",
    "{first}, your trial ends in 3 days",
]
BOUNCE = "550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"
RECEIPT_HTML = """<div style="font-family:Helvetica,Arial,sans-serif;max-width:520px;margin:24px auto;color:#1f2328">
<h2 style="margin:0 0 8px">Thanks for your order, Ada</h2>
<p style="color:#555">Order <b>#1042</b> is confirmed and on its way.</p>
<table style="width:100%;border-collapse:collapse;margin:16px 0">
<tr><td style="padding:6px 0;border-bottom:1px solid #eee">Analytical Engine, hand-cranked</td>
<td style="text-align:right;border-bottom:1px solid #eee">€ 1,840.00</td></tr>
<tr><td style="padding:6px 0;border-bottom:1px solid #eee">Punched cards (box of 500)</td>
<td style="text-align:right;border-bottom:1px solid #eee">€ 24.00</td></tr>
<tr><td style="padding:6px 0"><b>Total</b></td><td style="text-align:right"><b>€ 1,864.00</b></td></tr>
</table>
<p style="font-size:13px;color:#888">Questions? Just reply to this mail.</p></div>"""


def mail(created_at: float, number: int, rng: random.Random) -> Notification:
    to = rng.choice(PEOPLE)
    first = to.split()[0].split("@")[0].split(".")[0].capitalize()
    notification_id = str(uuid.uuid4())
    return Notification(
        id=notification_id,
        to=[to],
        subject=rng.choice(SUBJECTS).format(n=1000 + number, first=first),
        text="Hello,\n\nThis is a notification from Acme.\n",
        message_id=f"<{notification_id}@example.com>",
        request_id=uuid.uuid4().hex,
        created_at=created_at,
    )


async def seed(outbox_path: Path, now: float) -> str:
    """An hour of traffic; returns the id of the mail to photograph."""
    rng = random.Random(17)
    minute = now - now % 60
    accepted: list[Notification] = []
    bounced: set[str] = set()
    for minutes_ago in range(59, -1, -1):
        start = minute - minutes_ago * 60
        # A day's rhythm, a stall 40 minutes ago (the relay was down), a wave of bounces 20 minutes ago.
        count = 0 if 37 <= minutes_ago <= 40 else int(22 + 8 * math.sin(minutes_ago / 6) + rng.randint(0, 6))
        bounces = rng.randint(6, 12) if 17 <= minutes_ago <= 21 else int(rng.random() < 0.15)
        span = min(58.0, now - 5 - start)
        if span <= 0:
            continue
        count, bounces = round(count * span / 58), round(bounces * span / 58)
        batch = [mail(start + rng.uniform(0, span), len(accepted) + i, rng) for i in range(count + bounces)]
        bounced.update(n.id for n in rng.sample(batch, bounces))
        accepted += batch
    receipt = mail(now - 70, 42, rng)
    receipt.to, receipt.subject, receipt.html = (
        ["Ada Lovelace <ada@example.com>"],
        "Your receipt for order #1042",
        RECEIPT_HTML,
    )
    receipt.metadata = {"order": "1042", "customer": "c_8841"}
    report = mail(now - 4, 43, rng)
    report.to, report.subject = ["ops@example.com"], "Nightly report: 3 warnings"
    accepted += [receipt, report]
    accepted.sort(key=lambda n: n.created_at)

    opened = sqlite_outbox(outbox_path)
    await opened.open()
    outbox = opened.notifications
    try:
        await outbox.add(accepted)
        await outbox.claim(len(accepted), time.time())
        for n in accepted:
            done_at = min(now - 1, n.created_at + rng.uniform(0.05, 0.6))
            if n.id in bounced:
                address = n.to[0].rpartition("<")[2].rstrip(">")
                refused = [Refusal(address, 550, "5.1.1 User unknown")]
                await outbox.mark_failed(n.id, error=BOUNCE.format(address=address), refused=refused, now=done_at)
            elif n not in (receipt, report):
                await outbox.mark_sent(
                    n.id, smtp_reply=f"250 2.0.0 Ok: queued as {n.id[:10].upper()}", refused=[], now=done_at
                )
        # The receipt went at its second attempt; the report waits for its second.
        await outbox.mark_retry(
            receipt.id, error="421 4.7.0 mx.example.com: try again later", next_attempt_at=0, now=now - 68
        )
        await outbox.claim(1, time.time())
        await outbox.mark_sent(receipt.id, smtp_reply="250 2.0.0 Ok: queued as 4XJQ2M1Z7B", refused=[], now=now - 36)
        await outbox.mark_retry(
            report.id,
            error="451 4.3.0 mx.example.com: temporary lookup failure",
            next_attempt_at=now + 900,
            now=now - 3,
        )
        return receipt.id
    finally:
        await opened.close()


async def take_screenshots(out_dir: Path, work_dir: Path) -> list[Path]:
    sink = SmtpSink().start()
    now = time.time()
    receipt_id = await seed(work_dir / "outbox.sqlite3", now)
    service = await start_service(
        service_env(work_dir / "outbox.sqlite3", sink.port, LOG_LEVEL="WARNING"), work_dir / "service.log"
    )
    try:
        async with chromium() as browser:
            context = await browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
            page = await context.new_page()
            await page.goto(f"{service.base_url}/ui/")
            await page.wait_for_selector("table.notifications")
            activity = out_dir / ACTIVITY_PNG
            await page.screenshot(path=str(activity))
            await page.set_viewport_size({"width": 1280, "height": 1040})
            await page.goto(f"{service.base_url}/ui/notifications/{receipt_id}")
            await page.frame_locator("iframe.mail-html").locator("h2").wait_for()
            notification = out_dir / NOTIFICATION_PNG
            # The viewport, not full_page: Chromium leaves the mail's sandboxed frame (a process of its own) blank
            # in a full-page capture.
            await page.screenshot(path=str(notification))
            await context.close()
        return [activity, notification]
    finally:
        service.stop()
        sink.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        for path in asyncio.run(take_screenshots(DOCS, Path(work))):
            print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
