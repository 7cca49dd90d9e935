"""The dispatcher: claims due notifications from the outbox and sends them with SEND_CONCURRENCY workers.

One claimer task takes due notifications from the outbox in batches into a small in-memory queue; each
worker keeps one SMTP connection open and sends what it takes from that queue. The queue holds at most
CLAIMS_PER_WORKER * SEND_CONCURRENCY notifications; a crash can still only repeat the sends that were in
flight (the others were claimed, never tried: the next start puts them back). An outcome the outbox cannot
take (a full disk) is kept in memory and written again until it can be.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from service.config import Settings
from service.delivery.classify import DeliveryFailed, hard_bounces
from service.delivery.mime import addr_spec
from service.delivery.pacing import Pacer
from service.delivery.smtp import SmtpConnection
from service.domain import Bounce, Outcome, Refusal, SendFailed, SendOutcome
from service.metrics import Metrics
from service.outbox import Notification, NotificationStore, OutboxUnavailable

log = structlog.get_logger("service.delivery.dispatcher")

# The slow safety-net poll: normally the claimer is woken by new notifications or sleeps until the next
# retry is due; this only bounds how long it can miss a row written by someone else.
POLL_SECONDS = 5.0
# Outcomes the outbox could not take (a full disk), kept in memory until it can: at most this many, a few
# hundred bytes each. Past it the oldest is dropped, logged: its row stays `sending` and is sent again after a
# restart (or once its PostgreSQL lease runs out). Claims fail on the same disk, so few ever pile up.
UNWRITTEN_LIMIT = 10_000
# Between tries to write them: doubling from the first, up to the last.
UNWRITTEN_RETRY_SECONDS = (0.1, 5.0)
# The ready queue's size, per worker. A claim is one transaction and one trip to the outbox's thread (or
# PostgreSQL) whatever its size: with room for one per worker a draining dispatcher claimed ~5 rows at a time,
# with room for four ~16 (benchmarks/drain_cpu.py: see docs/profile.md for the CPU per mail it saves).
CLAIMS_PER_WORKER = 4

# One outcome write, made again as often as it takes.
OutcomeWrite = Callable[[], Awaitable[None]]


def retry_delay(attempts: int, settings: Settings) -> float:
    """Exponential backoff with jitter: base·2^(n-1), capped, then a random point in its upper half."""
    ceiling: float = min(settings.RETRY_MAX_SECONDS, settings.RETRY_BASE_SECONDS * 2 ** (attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def refused_for_good(refused: Sequence[Refusal]) -> list[Refusal]:
    """Recipients a server refused with 5xx: asking again cannot help."""
    return [r for r in refused if r.for_good]


def refused_for_now(refused: Sequence[Refusal]) -> list[Refusal]:
    """Recipients a server refused with 4xx (greylisting, a full mailbox): worth asking again later."""
    return [r for r in refused if r.for_now]


def reached_some(notification: Notification) -> bool:
    """Whether an earlier attempt delivered to someone: a recipient neither left in the envelope nor refused.
    (An envelope narrowed at accept, suppressed recipients left out, has reached nobody yet.)"""
    left = set(notification.envelope or ()) | {r.address for r in notification.refused_recipients}
    return any(address not in left for address in (addr_spec(a) for a in notification.recipients))


class Dispatcher:
    def __init__(
        self,
        outbox: NotificationStore,
        settings: Settings,
        *,
        connection_factory: Callable[[Settings], SmtpConnection] = SmtpConnection,
        metrics: Metrics | None = None,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.metrics = metrics or Metrics(settings.metric_tags())
        self.connection_factory = self.metrics.track_connections(connection_factory)
        self.inflight = 0
        self.metrics.watch_inflight(lambda: self.inflight)
        # One for all workers: SEND_RATE_LIMIT, and a throttling reply's pause, which backs the whole instance off
        # the way one notification's retries back off.
        self.pacer = Pacer(
            settings.SEND_RATE_LIMIT, first_pause=settings.RETRY_BASE_SECONDS, max_pause=settings.RETRY_MAX_SECONDS
        )
        self._ready: asyncio.Queue[Notification | None] = asyncio.Queue(
            maxsize=CLAIMS_PER_WORKER * settings.SEND_CONCURRENCY
        )
        self._wake = asyncio.Event()
        self._claimer: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False
        # By notification id, oldest first: at most one outcome per claim.
        self._unwritten: dict[str, OutcomeWrite] = {}
        self._unwritten_added = asyncio.Event()
        self._rewriter: asyncio.Task[None] | None = None
        self.metrics.watch_unwritten(lambda: len(self._unwritten))

    async def start(self) -> None:
        recovered = await self.outbox.recover()
        if recovered:
            log.warning("notifications_recovered", count=recovered, reason="left sending by a previous process")
        # Another replica's insert (shared outbox) wakes the claimer like one of ours does.
        self.outbox.subscribe(self._wake.set)
        self._workers = [
            asyncio.create_task(self._work_forever(), name=f"dispatcher-worker-{number}")
            for number in range(self.settings.SEND_CONCURRENCY)
        ]
        self._claimer = asyncio.create_task(self._claim_forever(), name="dispatcher-claimer")
        self._rewriter = asyncio.create_task(self._write_unwritten_forever(), name="dispatcher-rewriter")
        log.info("dispatcher_started", workers=self.settings.SEND_CONCURRENCY)

    @property
    def running(self) -> bool:
        return self._claimer is not None and not self._claimer.done()

    async def notify(self, notification_id: str) -> None:
        """A notification was just accepted: wake the claimer. The route's background task; async so that
        Starlette runs it on the event loop instead of handing it to its thread pool."""
        self.wake()

    def wake(self) -> None:
        """Wake the claimer: there may be due work (for callers on the event loop that aren't tasks)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming, give back what no worker started, let in-flight sends finish within the grace."""
        self._stopping = True
        if self._claimer is not None:
            # Not cancelled: a claim cancelled mid-way would still commit in the outbox's thread, and the rows
            # it took would be stranded in `sending`. Woken instead, the claimer finishes its claim and returns.
            self.pacer.close()  # a claimer waiting out a pause or for a turn returns at once
            self._wake.set()
            await self._claimer
        unstarted = []
        while not self._ready.empty():
            notification = self._ready.get_nowait()
            if notification is not None:
                unstarted.append(notification.id)
        if unstarted:
            with contextlib.suppress(OutboxUnavailable):
                await self.outbox.release(unstarted)
        for _ in self._workers:
            self._ready.put_nowait(None)
        if self._workers:
            _done, pending = await asyncio.wait(self._workers, timeout=self.settings.SHUTDOWN_GRACE_SECONDS)
            # Sends, not workers: with no grace at all, idle workers are still pending too.
            interrupted = self.inflight
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if interrupted:
                log.warning("dispatcher_sends_interrupted", count=interrupted)
        if self._rewriter is not None:
            self._rewriter.cancel()
            await asyncio.gather(self._rewriter, return_exceptions=True)
        if self._unwritten and not await self._write_unwritten():
            # Still unwritable at the last moment: these rows stay `sending`, and the next start sends them again.
            log.error(
                "outcomes_unwritten",
                count=len(self._unwritten),
                notification_ids=list(self._unwritten)[:20],
                consequence="left sending: sent again after the next start",
            )
        log.info("dispatcher_stopped", released=len(unstarted))

    @property
    def unwritten(self) -> int:
        """Outcomes waiting in memory for the outbox to take them."""
        return len(self._unwritten)

    # -- claiming -----------------------------------------------------------------------------------------

    async def _claim_forever(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            room = self._ready.maxsize - self._ready.qsize()
            if room == 0 or (room < self._ready.maxsize / 2 and not self._ready.empty()):
                # Woken (by an insert somewhere, or a worker taking one) while the workers still have work
                # waiting: claim once half the queue is free, a few rows per transaction instead of one per
                # mail. Asking the outbox now would only spin.
                await self._wake.wait()
                continue
            room = await self.pacer.wait_for_turns(room)
            if room == 0:
                continue  # stopping
            try:
                claimed = await self.outbox.claim(room, time.time())
                await self.pacer.use_turns(len(claimed))
                next_due = None if claimed else await self.outbox.next_due_at()
                failures = 0
            except Exception as exc:
                # The outbox is unreachable (or worse): keep trying with backoff; the claimer must outlive it.
                failures += 1
                log.error("outbox_claim_failed", error=str(exc), exc_info=not isinstance(exc, OutboxUnavailable))
                await asyncio.sleep(min(POLL_SECONDS, 0.1 * 2**failures))
                continue
            for notification in claimed:
                self._ready.put_nowait(notification)
            if claimed:
                if len(claimed) == room:
                    # The queue is full: wait until a worker takes one (it wakes us) before claiming more.
                    await self._wake.wait()
                continue
            timeout = POLL_SECONDS if next_due is None else min(POLL_SECONDS, max(0.0, next_due - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    # -- sending ------------------------------------------------------------------------------------------

    async def _work_forever(self) -> None:
        connection = self.connection_factory(self.settings)
        try:
            while True:
                notification = await self._ready.get()
                if notification is None:
                    return
                if self._ready.qsize() <= self._ready.maxsize // 2:
                    # Half the queue is free: the claimer's turn (not on every take: it would wake only to wait).
                    self._wake.set()
                if self.pacer.paused or self._claimed_too_long_ago(notification):
                    # The relay said "slower" after this one was claimed, or it waited behind stalled sends: it goes
                    # back unsent (no attempt counted), and is claimed again after the pause or at once.
                    with contextlib.suppress(OutboxUnavailable):
                        await self.outbox.release([notification.id])
                    continue
                self.inflight += 1
                try:
                    if notification.attachments:
                        # Read for this send only (a claim never reads them), and let go of once it is over.
                        notification.attachment_data = await self.outbox.attachment_data(notification.id)
                    await self._deliver(connection, notification)
                except Exception:
                    # A bug must cost one attempt of one mail, never a worker: the mail goes back to the queue
                    # with its backoff (failed after MAX_ATTEMPTS), and the worker takes the next one.
                    log.exception("dispatcher_delivery_crashed", notification_id=notification.id)
                    connection.close()
                    await self._record_failure(
                        notification, SendFailed("internal error while sending (see the logs)", transient=True)
                    )
                finally:
                    notification.attachment_data = []
                    self.inflight -= 1
        finally:
            if self._stopping and not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                await connection.quit()
            else:
                connection.close()

    def _claimed_too_long_ago(self, notification: Notification) -> bool:
        """Whether a claim waited in the queue longer than one send may last (its `updated_at` is the claim's
        time). Started anyway, its send could outlive a PostgreSQL lease (LEASE_SECONDS > 2 * SEND_TIMEOUT_SECONDS
        covers one send of waiting, as with one claim per worker), and another replica could claim it again."""
        return time.time() - notification.updated_at > self.settings.SEND_TIMEOUT_SECONDS

    async def _deliver(self, connection: SmtpConnection, notification: Notification) -> None:
        with structlog.contextvars.bound_contextvars(
            notification_id=notification.id, request_id=notification.request_id
        ):
            log.info("notification_sending", attempt=notification.attempts)
            started = time.perf_counter()
            try:
                outcome: SendOutcome = await connection.send(notification)
            except DeliveryFailed as failed:
                outcome = failed.outcome
                # A throttling reply slows the whole instance down (pacing.py): it reads the server's own error.
                self.pacer.after_failure(failed.__cause__, started)
            except asyncio.CancelledError:
                # Shutdown ran out of grace mid-send: whether the server took it is unknown, so it goes back
                # to the queue and may be sent twice (at-least-once), rather than being lost.
                await asyncio.shield(
                    self._record(
                        notification,
                        lambda: self.outbox.mark_retry(
                            notification.id,
                            error="interrupted by shutdown",
                            next_attempt_at=time.time(),
                            now=time.time(),
                            attempt=notification.attempts,
                            outcome=Outcome.INTERRUPTED,
                        ),
                    )
                )
                raise
            if isinstance(outcome, SendFailed):
                self.metrics.observe_send(time.perf_counter() - started, outcome)
                await self._record_failure(notification, outcome)
                return
            taken = outcome
            # Refusals of earlier attempts that are final stay on record beside this attempt's.
            refused = [*refused_for_good(notification.refused_recipients), *taken.refused]
            for_now = refused_for_now(taken.refused)
            if for_now and notification.attempts < self.settings.MAX_ATTEMPTS:
                # Not sent yet, as far as the counters go: the notification is sent once every recipient is.
                self.metrics.observe_send(
                    time.perf_counter() - started, SendFailed("recipients refused for now", transient=True)
                )
                await self._retry_recipients(notification, for_now, refused, self._bounces(taken.refused))
                return
            self.metrics.observe_send(time.perf_counter() - started, tags=notification.tags)
            sent_at = time.time()
            await self._record(
                notification,
                lambda: self.outbox.mark_sent(
                    notification.id,
                    smtp_reply=taken.smtp_reply,
                    refused=refused,
                    now=sent_at,
                    attempt=notification.attempts,
                    bounces=self._bounces(taken.refused),
                ),
            )
            log.info(
                "notification_sent",
                attempts=notification.attempts,
                smtp_reply=taken.smtp_reply,
                refused=[r.to_json() for r in taken.refused] or None,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )

    def _bounces(self, refused: Sequence[Refusal]) -> list[Bounce]:
        """The hard bounces among a send's refusals, for the suppression list (written with the outcome)."""
        return hard_bounces(refused, suppress=self.settings.SUPPRESS_ON_HARD_BOUNCE) if refused else []

    async def _retry_recipients(
        self, notification: Notification, for_now: list[Refusal], refused: list[Refusal], bounces: list[Bounce]
    ) -> None:
        """The server took the mail for some recipients and refused others with a 4xx (greylisting, a full
        mailbox): only those are tried again later, so nobody who has the mail gets it twice."""
        now = time.time()
        delay = retry_delay(notification.attempts, self.settings)
        reason = "refused for now: " + "; ".join(f"{r.address}: {r.code} {r.message}" for r in for_now)
        await self._record(
            notification,
            lambda: self.outbox.mark_retry(
                notification.id,
                error=reason,
                next_attempt_at=now + delay,
                now=now,
                attempt=notification.attempts,
                envelope=[r.address for r in for_now],
                refused=refused,
                smtp_code=for_now[0].code,
                bounces=bounces,
            ),
        )
        self._wake.set()
        log.warning(
            "notification_retry_scheduled",
            attempts=notification.attempts,
            error=reason,
            recipients=[r.address for r in for_now],
            retry_in_seconds=round(delay, 3),
        )

    async def _record_failure(self, notification: Notification, failure: SendFailed) -> None:
        now = time.time()
        if failure.transient and notification.attempts < self.settings.MAX_ATTEMPTS:
            delay = retry_delay(notification.attempts, self.settings)
            # Every recipient refused, some for good (5xx) and some for now (4xx): only the latter are tried again.
            for_good = refused_for_good(failure.refused)
            for_now = [r.address for r in refused_for_now(failure.refused)]
            await self._record(
                notification,
                lambda: self.outbox.mark_retry(
                    notification.id,
                    error=failure.message,
                    next_attempt_at=now + delay,
                    now=now,
                    attempt=notification.attempts,
                    envelope=for_now if for_good and for_now else None,
                    refused=[*refused_for_good(notification.refused_recipients), *for_good] if for_good else None,
                    smtp_code=failure.code,
                    bounces=self._bounces(failure.refused),
                ),
            )
            # The claimer may be asleep until a later due time (or the slow poll): let it see this one.
            self._wake.set()
            log.warning(
                "notification_retry_scheduled",
                attempts=notification.attempts,
                error=failure.message,
                retry_in_seconds=round(delay, 3),
            )
            return
        reason = failure.message
        if failure.transient:
            reason = f"gave up after {notification.attempts} attempts: {failure.message}"
        if notification.envelope is not None and reached_some(notification):
            await self._end_partly_sent(notification, failure, reason)
            return
        await self._record(
            notification,
            lambda: self.outbox.mark_failed(
                notification.id,
                error=reason,
                # Refused for good before (suppressed at accept, or a 5xx of an earlier attempt) stays listed.
                refused=[*refused_for_good(notification.refused_recipients), *failure.refused],
                now=now,
                attempt=notification.attempts,
                smtp_code=failure.code,
                bounces=self._bounces(failure.refused),
            ),
        )
        self.metrics.count_failed(permanent=not failure.transient, tags=notification.tags)
        log.error(
            "notification_failed",
            attempts=notification.attempts,
            error=reason,
            permanent=not failure.transient,
            refused=[r.to_json() for r in failure.refused] or None,
        )

    async def _end_partly_sent(self, notification: Notification, failure: SendFailed, reason: str) -> None:
        """The last word on a notification an earlier attempt delivered to some recipients: it is `sent` (they
        have it), and the recipients it never reached are listed, with why, in `refused_recipients`."""
        now = time.time()
        # 0 when the server gave no reply code (a lost connection, a timeout).
        unreached = list(failure.refused) or [
            Refusal(address=address, code=failure.code or 0, message=reason) for address in notification.envelope or []
        ]
        refused = [*refused_for_good(notification.refused_recipients), *unreached]
        await self._record(
            notification,
            lambda: self.outbox.mark_sent(
                notification.id,
                smtp_reply=notification.smtp_reply or "250 taken for the other recipients by an earlier attempt",
                refused=refused,
                now=now,
                attempt=notification.attempts,
                bounces=self._bounces(failure.refused),
            ),
        )
        self.metrics.count_sent(notification.tags)
        log.warning(
            "notification_sent", attempts=notification.attempts, refused=[r.to_json() for r in refused], partly=True
        )

    async def _record(self, notification: Notification, write: OutcomeWrite) -> None:
        """Write a delivery outcome to the outbox; one it cannot take now is kept and written again later."""
        try:
            await write()
        except OutboxUnavailable as exc:
            # Never raised into the worker: an outcome that failed to be written must not become a retry of a
            # mail the server already took. Kept instead, its row `sending` under this claim (nobody claims it
            # meanwhile), and written once the outbox takes writes again: the mail is not sent twice.
            log.error("outbox_write_failed", error=str(exc), kept=True)
            self._keep_unwritten(notification.id, write)
        except Exception as exc:
            # A bug, not the disk: writing it again would fail again. The row stays `sending`; the next start
            # puts it back in the queue (a possible duplicate, never a loss).
            log.error("outbox_write_failed", error=str(exc), kept=False, exc_info=True)

    def _keep_unwritten(self, notification_id: str, write: OutcomeWrite) -> None:
        if len(self._unwritten) >= UNWRITTEN_LIMIT:
            dropped = next(iter(self._unwritten))
            del self._unwritten[dropped]
            log.error(
                "outcome_dropped",
                dropped_notification_id=dropped,
                limit=UNWRITTEN_LIMIT,
                consequence="left sending: sent again after a restart or once its lease runs out",
            )
        self._unwritten[notification_id] = write
        self._unwritten_added.set()

    async def _write_unwritten_forever(self) -> None:
        first, last = UNWRITTEN_RETRY_SECONDS
        while True:
            await self._unwritten_added.wait()
            self._unwritten_added.clear()
            delay = first
            while not await self._write_unwritten():
                await asyncio.sleep(delay)
                delay = min(last, delay * 2)

    async def _write_unwritten(self) -> bool:
        """Write the kept outcomes, oldest first, until one fails; True once none is left."""
        if not self._unwritten:
            return True
        with contextlib.suppress(Exception):
            # Their claims must outlive the wait (a PostgreSQL lease): nobody may claim and send them again.
            await self.outbox.hold(list(self._unwritten), time.time())
        written = 0
        for notification_id, write in list(self._unwritten.items()):
            try:
                await write()
            except OutboxUnavailable as exc:
                log.warning("outcomes_still_unwritten", count=len(self._unwritten), error=str(exc))
                return False
            except Exception as exc:
                log.error("outbox_write_failed", error=str(exc), kept=False, exc_info=True)
            else:
                written += 1
            self._unwritten.pop(notification_id, None)
        log.info("outcomes_written", count=written)
        return not self._unwritten
