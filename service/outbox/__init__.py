"""The outbox: where an accepted notification lives, on disk, from the 202 until it is sent or failed.

One interface (`Outbox`) and its implementations; SQL lives in the implementations and nowhere else.
The dispatcher and the routes only ever talk to this interface.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
STATUSES = (QUEUED, SENDING, SENT, FAILED)


@dataclass(slots=True)
class Notification:
    """One notification as the outbox stores it: the mail's content and its delivery state."""

    id: str
    to: list[str]
    subject: str
    message_id: str
    created_at: float
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: str | None = None
    text: str | None = None
    html: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    request_id: str | None = None
    status: str = QUEUED
    attempts: int = 0
    last_error: str | None = None
    smtp_reply: str | None = None
    refused_recipients: list[dict[str, Any]] = field(default_factory=list)
    updated_at: float = 0.0
    sent_at: float | None = None
    next_attempt_at: float = 0.0
    # When set, the SMTP envelope's recipients instead of to + cc + bcc: what is left to send after a server
    # took the mail for some recipients and refused others with a 4xx (the headers still name everyone).
    envelope: list[str] | None = None
    # Position in the outbox, assigned on insert: orders listings and makes cursors.
    seq: int | None = None

    @property
    def recipients(self) -> list[str]:
        return [*self.to, *self.cc, *self.bcc]


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Notification]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class QueueGauges:
    """What a metrics scrape reads: cheap at any table size (kept counts and one index lookup)."""

    counts: dict[str, int]
    oldest_queued_at: float | None


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """A notification whose last attempt failed: retrying (`queued`/`sending`) or `failed`."""

    notification_id: str
    status: str
    attempts: int
    error: str
    at: float
    request_id: str | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    gauges: QueueGauges
    # (start of the minute as UNIX seconds, mail sent in it), oldest first, the current minute last.
    sent_per_minute: list[tuple[float, int]]
    recent_errors: list[ErrorEntry]


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """An Idempotency-Key and the answer given to its first request, stored with that request's notifications.

    `scope` separates callers (one per API key), `fingerprint` identifies the request the key was first used
    with; `body` and `headers` are replayed as they were, with `status_code`.
    """

    scope: str
    key: str
    fingerprint: str
    status_code: int
    body: bytes
    headers: dict[str, str]
    created_at: float
    expires_at: float


class OutboxUnavailable(Exception):
    """The outbox cannot be read or written (disk full, file gone, database down)."""


class QueueFull(Exception):
    """Taking these notifications would put more than the queue limit in the outbox unsent."""

    def __init__(self, unsent: int, limit: int, adding: int) -> None:
        super().__init__(f"{unsent} notifications wait to be sent; adding {adding} would pass the limit of {limit}")
        self.unsent = unsent
        self.limit = limit
        self.adding = adding


class IdempotencyKeyTaken(Exception):
    """Another request stored this Idempotency-Key first (a race between processes): nothing was added."""


class Outbox(abc.ABC):
    """A durable store of notifications. Every method that returns has made its change durable."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema and make the store ready."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def add(self, notifications: Sequence[Notification], *, idempotency: IdempotencyRecord | None = None) -> None:
        """Store new notifications (`queued`, due now) in one transaction; returns once they are on disk.

        With `idempotency`, the key's record is committed in the same transaction, so neither exists without
        the other. Raises QueueFull (nothing added) when the queue limit would be passed, and
        IdempotencyKeyTaken (nothing added) when the key is already stored and not expired.
        """

    @abc.abstractmethod
    async def count_unsent(self) -> int:
        """Notifications `queued` or `sending`: cheap enough to ask on every request (no table scan)."""

    @abc.abstractmethod
    async def get_idempotency(self, scope: str, key: str, now: float) -> IdempotencyRecord | None:
        """The stored record of an Idempotency-Key, or None when unknown or expired."""

    @abc.abstractmethod
    async def sweep_idempotency(self, now: float) -> int:
        """Forget expired Idempotency-Keys. Returns how many."""

    @abc.abstractmethod
    async def get(self, notification_id: str) -> Notification | None: ...

    @abc.abstractmethod
    async def page(self, *, status: str | None, limit: int, cursor: str | None) -> Page:
        """Notifications newest first; `cursor` is the `next_cursor` of the previous page."""

    @abc.abstractmethod
    async def recover(self) -> int:
        """At start: put back to `queued` what a previous process left `sending`. Returns how many."""

    @abc.abstractmethod
    async def claim(self, limit: int, now: float) -> list[Notification]:
        """Take up to `limit` due `queued` notifications, oldest due first: `sending`, one attempt more."""

    @abc.abstractmethod
    async def release(self, notification_ids: Sequence[str]) -> None:
        """Give back claimed notifications that were never tried: `queued`, the attempt not counted."""

    # The outcome writes take the claim's `attempt` (its attempts number): given, the write only lands while the
    # row is still `sending` under that claim, so a claimer whose claim was taken over (a lease that ran out)
    # cannot overwrite the newer claim's outcome.

    @abc.abstractmethod
    async def mark_sent(
        self,
        notification_id: str,
        *,
        smtp_reply: str,
        refused: list[dict[str, Any]],
        now: float,
        attempt: int | None = None,
    ) -> None: ...

    @abc.abstractmethod
    async def mark_retry(
        self,
        notification_id: str,
        *,
        error: str,
        next_attempt_at: float,
        now: float,
        attempt: int | None = None,
        envelope: list[str] | None = None,
        refused: list[dict[str, Any]] | None = None,
    ) -> None:
        """A transient failure: back to `queued`, due again at `next_attempt_at`. With `envelope`, only those
        recipients are tried again (the others already have the mail); `refused` replaces the recorded list."""

    @abc.abstractmethod
    async def mark_failed(
        self,
        notification_id: str,
        *,
        error: str,
        refused: list[dict[str, Any]],
        now: float,
        attempt: int | None = None,
    ) -> None: ...

    @abc.abstractmethod
    async def requeue_failed(self, notification_id: str, now: float) -> Notification | None:
        """A `failed` notification back to `queued` with its attempts reset; None unless it was `failed`."""

    @abc.abstractmethod
    async def next_due_at(self) -> float | None:
        """When the earliest `queued` notification is due, or None when nothing waits."""

    # Not abstract, so that a store written before these existed still starts; it must add them for
    # /metrics and /v1/stats to answer (they are computed from the store so that replicas sharing one
    # database agree).
    async def queue_gauges(self) -> QueueGauges:
        """Notifications per status and when the oldest queued one was accepted, without a table scan."""
        raise NotImplementedError(f"{type(self).__name__} has no queue_gauges()")

    async def queue_stats(self, now: float, *, minutes: int, errors: int) -> QueueStats:
        """The gauges, mail sent per minute over the last `minutes` and the `errors` latest errors."""
        raise NotImplementedError(f"{type(self).__name__} has no queue_stats()")

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The number of the last schema migration applied."""

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Raise OutboxUnavailable unless a write goes through now."""

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call `wake` (on the event loop) when another process may have added due work.

        A store only one process writes needs nothing here (the default); a shared one (PostgreSQL) calls it
        on every insert by any replica. Best effort: the dispatcher's slow poll covers a missed wake-up.
        """
        return None


def read_migrations(backend: str) -> list[tuple[int, str, str]]:
    """A backend's schema migrations, `migrations/<backend>/NNNN_name.sql`, as (number, name, script) in order."""
    found = []
    for entry in (resources.files("service.outbox") / "migrations" / backend).iterdir():
        if entry.name.endswith(".sql"):
            number, name = entry.name.removesuffix(".sql").split("_", 1)
            found.append((int(number), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def open_outbox(settings: Any, *, lock: bool = True) -> Outbox:
    """PostgreSQL when OUTBOX_URL is set (several replicas share it), else the SQLite file at OUTBOX_PATH.

    `lock=False` only for the dispatcher's own process: the SQLite file's lock is its parent's (inherited)."""
    if settings.OUTBOX_URL is not None:
        from service.outbox.postgres import PostgresOutbox

        return PostgresOutbox(
            settings.OUTBOX_URL.get_secret_value(),
            lease_seconds=settings.LEASE_SECONDS,
            pool_size=settings.OUTBOX_POOL_SIZE,
            queue_limit=getattr(settings, "QUEUE_LIMIT", None),
        )
    from service.outbox.sqlite import SqliteOutbox

    return SqliteOutbox(
        settings.OUTBOX_PATH,
        synchronous=settings.OUTBOX_SYNCHRONOUS,
        queue_limit=getattr(settings, "QUEUE_LIMIT", None),
        lock=lock,
    )


def describe_outbox(settings: Any) -> str:
    """Where the outbox lives, for logs: the file, or the database URL without its password."""
    if settings.OUTBOX_URL is not None:
        from service.outbox.postgres import redact

        return redact(settings.OUTBOX_URL.get_secret_value())
    return str(settings.OUTBOX_PATH)
