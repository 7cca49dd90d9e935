"""The webhook senders: deliveries claimed from the outbox, signed (Standard Webhooks) and POSTed by a few workers
of their own, retried with backoff, given up after WEBHOOK_MAX_ATTEMPTS. docs/events.md has the contract.

Mail never waits for them: the events are written with the outcomes (one INSERT in the same transaction), and
these workers share nothing with the dispatcher but the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime

import httpx
import structlog
from standardwebhooks.webhooks import Webhook

from service.config import Settings
from service.metrics import Metrics
from service.outbox import OutboxUnavailable, WebhookStore
from service.outbox.webhooks import Delivery

log = structlog.get_logger("service.events.webhooks")

# How often the senders look for due deliveries when nothing woke them: events are written by the dispatcher's
# process and other replicas too, which cannot wake this one. One indexed query each time.
POLL_SECONDS = 0.5
# A claim outlives one request by far: a sender that dies mid-request loses it after this, and another (or the
# next start) sends the delivery again.
LEASE_FLOOR_SECONDS = 60.0
# What of a receiver's reply is kept as the delivery's last error.
REPLY_EXCERPT = 200


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: base·2^(n-1), capped, then a random point in its upper half."""
    ceiling: float = min(cap, base * 2 ** (attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def sign(webhook: Webhook, event_id: str, body: str, now: float) -> dict[str, str]:
    """The Standard Webhooks headers of one request: the event's id (the same on every retry, for the
    receiver's deduplication), the time of this attempt, and its signature over both and the body."""
    timestamp = datetime.fromtimestamp(now, UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": webhook.sign(event_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": "notification-service-webhooks",
    }


class WebhookSender:
    """WEBHOOK_CONCURRENCY workers in this process, fed by one loop that claims due deliveries."""

    def __init__(
        self,
        store: WebhookStore,
        settings: Settings,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.webhook = Webhook(settings.WEBHOOK_SECRET.get_secret_value())
        self.lease_seconds = max(LEASE_FLOOR_SECONDS, 4 * settings.WEBHOOK_TIMEOUT_SECONDS)
        # No redirects (a 3xx is not a delivery, and following one could lead past the SSRF guard), no proxy
        # from the environment.
        self.client = httpx.AsyncClient(
            timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            limits=httpx.Limits(max_connections=settings.WEBHOOK_CONCURRENCY),
        )
        self._inflight: set[asyncio.Task[None]] = set()
        # The delivery of each task in flight, to give it back if shutdown cuts it short.
        self._deliveries: dict[asyncio.Task[None], Delivery] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        recovered = await self.store.recover(time.time())
        if recovered:
            log.info("webhook_deliveries_recovered", count=recovered)
        self._loop = asyncio.create_task(self._claim_forever(), name="webhook-sender")

    def wake(self) -> None:
        """Look for due deliveries now (an event was just written in this process)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; requests in flight get SHUTDOWN_GRACE_SECONDS to finish, then are cut short and their
        deliveries given back, due at once (their receivers may have had them: at-least-once)."""
        if self._loop is not None:
            # Told, not cancelled: Python 3.11's asyncio.wait_for returns a wait that ended in the same instant
            # as the cancel and drops the cancel, and a delivery ending just as the service stopped hung the
            # shutdown for good. Woken, the loop finishes the claim it is in (if any) and returns.
            self._stopping = True
            self._wake.set()
            await self._loop
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=self.settings.SHUTDOWN_GRACE_SECONDS)
        cut = dict(self._deliveries)
        for task in cut:
            task.cancel()
        await asyncio.gather(*cut, return_exceptions=True)
        now = time.time()
        for delivery in cut.values():
            # Lands only while the claim still holds it (an outcome written before the cancel wins).
            with contextlib.suppress(OutboxUnavailable):
                await self.store.mark_retry(
                    delivery.id,
                    attempt=delivery.attempts,
                    error="interrupted by shutdown",
                    response_code=None,
                    next_attempt_at=now,
                    now=now,
                )
        await self.client.aclose()

    async def _claim_forever(self) -> None:
        concurrency = self.settings.WEBHOOK_CONCURRENCY
        while not self._stopping:
            self._wake.clear()
            free = concurrency - len(self._inflight)
            claimed: list[Delivery] = []
            if free > 0:
                try:
                    claimed = await self.store.claim(free, time.time(), self.lease_seconds)
                except OutboxUnavailable as exc:
                    log.warning("webhook_claim_failed", error=str(exc))
            for delivery in claimed:
                task = asyncio.create_task(self._deliver(delivery), name=f"webhook-{delivery.id}")
                self._inflight.add(task)
                self._deliveries[task] = delivery
                task.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                # Busy: go on as soon as a worker is free (its done callback wakes us).
                await self._wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._deliveries.pop(task, None)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook_delivery_crashed", error=repr(task.exception()))

    async def _deliver(self, delivery: Delivery) -> None:
        now = time.time()
        code: int | None = None
        try:
            response = await self.client.post(
                delivery.url,
                content=delivery.body.encode(),
                headers=sign(self.webhook, delivery.event_id, delivery.body, now),
            )
            code = response.status_code
            error = None if 200 <= code < 300 else f"HTTP {code}: {response.text[:REPLY_EXCERPT]}"
        except httpx.TimeoutException:
            error = f"timed out after {self.settings.WEBHOOK_TIMEOUT_SECONDS:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        try:
            await self._record(delivery, code, error)
        except OutboxUnavailable as exc:
            # The claim's lease (or the next start) sends it again: at-least-once.
            log.warning("webhook_outcome_unwritten", delivery_id=delivery.id, error=str(exc))

    async def _record(self, delivery: Delivery, code: int | None, error: str | None) -> None:
        now = time.time()
        attempt = delivery.attempts
        fields = {"delivery_id": delivery.id, "event_id": delivery.event_id, "event_type": delivery.event_type}
        if error is None and code is not None:
            await self.store.mark_delivered(delivery.id, attempt=attempt, response_code=code, now=now)
            self.metrics.webhook_deliveries.labels(result="delivered").inc()
            log.info("webhook_delivered", **fields, attempts=delivery.attempts, status_code=code)
            return
        error = error or "no reply"
        if delivery.attempts >= self.settings.WEBHOOK_MAX_ATTEMPTS:
            await self.store.mark_failed(
                delivery.id, attempt=delivery.attempts, error=error, response_code=code, now=now
            )
            self.metrics.webhook_deliveries.labels(result="failed").inc()
            log.warning("webhook_given_up", **fields, attempts=delivery.attempts, error=error)
            return
        delay = retry_delay(
            delivery.attempts, self.settings.WEBHOOK_RETRY_BASE_SECONDS, self.settings.WEBHOOK_RETRY_MAX_SECONDS
        )
        await self.store.mark_retry(
            delivery.id,
            attempt=delivery.attempts,
            error=error,
            response_code=code,
            next_attempt_at=now + delay,
            now=now,
        )
        self.metrics.webhook_deliveries.labels(result="retry").inc()
        log.info("webhook_retry", **fields, attempts=delivery.attempts, error=error, retry_in=round(delay, 1))
