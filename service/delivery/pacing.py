"""Pacing: how fast this instance sends. SEND_RATE_LIMIT's token bucket, one for all its workers, and the pause
of all of them after the relay answers "slower" (421, 454, a 451 for the whole mail).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextvars import Context

import aiosmtplib
import structlog
from aiolimiter import AsyncLimiter

log = structlog.get_logger("service.delivery.pacing")

# Replies that mean "too fast" for the whole connection: 421 closes the channel (Gmail's 4.7.0 "Try again
# later", Microsoft's "server busy"), 454 is Amazon SES' "Throttling failure: Maximum sending rate exceeded".
THROTTLE_CODES = frozenset({421, 454})
# 451 also, but only for the whole mail: for one recipient it is greylisting, which says nothing of our rate.
WHOLE_MAIL_THROTTLE_CODES = THROTTLE_CODES | {451}
# The bucket holds a tenth of a second's mails: a relay counting per second never sees the next second's
# share arrive at once, and a limit of 1,000/s still needs no timer per mail.
BURST_SECONDS = 0.1


def throttling_reply(exc: BaseException | None) -> str | None:
    """The server's reply if the failure `exc` (or what caused it) says we send too fast, else None."""
    while exc is not None:
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            codes = [(r.code, r.message) for r in exc.recipients if r.code in THROTTLE_CODES]
            return f"{codes[0][0]} {codes[0][1]}" if codes else None
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            if exc.code in WHOLE_MAIL_THROTTLE_CODES and not isinstance(exc, aiosmtplib.SMTPRecipientRefused):
                return f"{exc.code} {exc.message}"
            return None
        exc = exc.__cause__
    return None


class Pacer:
    """How fast the instance sends. Turns are taken where notifications are claimed, so a claimed notification
    never waits for its turn (on PostgreSQL its lease runs while it waits): with a rate, the claimer claims only
    as many as the bucket has turns for now. After a throttling reply nothing is claimed or started for a pause
    that doubles while throttles keep coming (first_pause up to max_pause), and starts over once `calm_seconds`
    pass after a pause without one."""

    def __init__(
        self,
        rate: float,
        *,
        first_pause: float = 1.0,
        max_pause: float = 60.0,
        calm_seconds: float = 30.0,
    ) -> None:
        self.rate = rate
        self.first_pause = first_pause
        self.max_pause = max_pause
        self.calm_seconds = calm_seconds
        self._limiter: AsyncLimiter | None = None
        if rate > 0:
            burst = max(1.0, rate * BURST_SECONDS)
            self._limiter = AsyncLimiter(burst, burst / rate)
        # perf_counter, the dispatcher's clock for when a send started.
        self._paused_until = float("-inf")
        self._throttled_at = float("-inf")
        self._throttles = 0
        # Turns taken from the bucket while waiting for them, not yet used by a claim.
        self._held = 0
        self._resume: asyncio.TimerHandle | None = None
        self._closing = asyncio.Event()

    @property
    def paused(self) -> bool:
        return time.perf_counter() < self._paused_until

    async def wait_for_turns(self, wanted: int) -> int:
        """Wait until sending may go on (past any pause, with a turn in the bucket); how many of `wanted` may go
        now. 0 once closing."""
        while not self._closing.is_set():
            pause = self._paused_until - time.perf_counter()
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._closing.wait()
                continue
            if self._limiter is None:
                return wanted
            if self._held == 0 and not self._limiter.has_capacity():
                # The bucket is empty: wait (on its own timer) for half of it to drip back, so that a claim takes
                # a few rows per transaction rather than one per turn. What it takes is held for the next claim
                # (a claim that finds nothing due keeps it).
                self._held = await self._take(max(1, min(wanted, int(self._limiter.max_rate / 2))))
                continue  # a throttle may have come meanwhile
            more = wanted - self._held
            while more > 0 and not self._limiter.has_capacity(more):
                more -= 1
            return self._held + more
        return 0

    async def _take(self, turns: int) -> int:
        assert self._limiter is not None
        token = asyncio.ensure_future(self._limiter.acquire(turns))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait((token, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not token.done():
                token.cancel()
        return turns if token.done() and not token.cancelled() and token.exception() is None else 0

    async def use_turns(self, count: int) -> None:
        """`count` notifications were claimed with the turns wait_for_turns offered: take them from the bucket."""
        held = min(count, self._held)
        self._held -= held
        if self._limiter is not None and count > held:
            # At once: the claimer is the bucket's only taker, so the turns it was offered are still there.
            await self._limiter.acquire(count - held)

    def after_failure(self, exc: BaseException | None, started: float) -> None:
        """A send that began at `started` (perf_counter) failed with `exc`: pause every worker if the server said
        we send too fast. A send already under way when the last pause began is part of the burst that pause
        answers, so its throttle does not lengthen it."""
        reply = throttling_reply(exc)
        if reply is None or started < self._throttled_at:
            return
        now = time.perf_counter()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
            if now >= self._paused_until:
                # That pause is over by the clock `paused` reads, but the loop had not run its timer yet: it still
                # ends with its event, before the next one begins (seen on a busy machine: a lost sending_resumed).
                self._resumed(self._paused_until - self._throttled_at)
        calm = now > self._paused_until + self.calm_seconds
        self._throttles = 1 if calm else self._throttles + 1
        pause = min(self.max_pause, self.first_pause * 2 ** (self._throttles - 1))
        self._throttled_at = now
        self._paused_until = now + pause
        self._resume = asyncio.get_running_loop().call_later(pause, self._resumed, pause, context=Context())
        # An event of the instance, not of the notification whose send got the reply (its own retry event says
        # that): logged outside its context, so its notification_id and request_id stay off it.
        Context().run(
            log.warning,
            "sending_throttled",
            reply=reply,
            pause_seconds=round(pause, 3),
            throttles=self._throttles,
            rate_limit=self.rate or None,
        )

    def _resumed(self, pause: float) -> None:
        self._resume = None
        log.info("sending_resumed", paused_seconds=round(pause, 3), rate_limit=self.rate or None)

    def close(self) -> None:
        """Stopping: a claimer waiting out a pause or for a turn gets 0 at once."""
        self._closing.set()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
