"""The notification store: a notification from its 202 until it is sent or failed, and the dispatcher's claims.

Every method that returns has made its change durable.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.domain import Bounce, HistoryEntry, Outcome, Refusal, Status
from service.outbox.idempotency import IdempotencyRecord


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """What the outbox keeps of an attachment beside the notification: everything but its bytes, which live in a
    table of their own (migration 0007) so that claims and listings never read them."""

    filename: str
    content_type: str
    size: int
    content_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "content_type": self.content_type,
            "content_id": self.content_id,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> AttachmentInfo:
        return cls(value["filename"], value["content_type"], value["size"], value.get("content_id"))


@dataclass(slots=True)
class Notification:
    """One notification as the outbox stores it: the mail's content and its delivery state."""

    id: str
    to: list[str]
    subject: str
    message_id: str
    created_at: float
    cc: list[str] = field(default_factory=list)
    # The request's `from` (checked against ALLOWED_FROM): the From header and, as its addr-spec, the envelope
    # sender. None: MAIL_FROM.
    sender: str | None = None
    bcc: list[str] = field(default_factory=list)
    reply_to: str | None = None
    text: str | None = None
    html: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # The request's own headers for the mail (checked names, canonical spelling) and its tags (unique, in order).
    headers: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    request_id: str | None = None
    status: Status = Status.QUEUED
    attempts: int = 0
    last_error: str | None = None
    smtp_reply: str | None = None
    refused_recipients: list[Refusal] = field(default_factory=list)
    updated_at: float = 0.0
    sent_at: float | None = None
    next_attempt_at: float = 0.0
    # When set, the SMTP envelope's recipients instead of to + cc + bcc: what is left to send after a server
    # took the mail for some recipients and refused others with a 4xx (the headers still name everyone).
    envelope: list[str] | None = None
    # Every attempt's outcome, oldest first, the last HISTORY_LIMIT of them; `last_error` is the last error in it.
    history: list[HistoryEntry] = field(default_factory=list)
    # When a `scheduled` notification is to be sent (UNIX seconds); it is due then: next_attempt_at = send_at.
    send_at: float | None = None
    # The attachments without their bytes, in order; an inline one (content_id) is referred to by `cid:` in html.
    attachments: list[AttachmentInfo] = field(default_factory=list)
    # The attachments' bytes, in the same order, only while they travel: from the intake to add(), and from
    # attachment_data() into the mail of one send. Never read by a claim, a page or get().
    attachment_data: list[bytes] = field(default_factory=list, repr=False)
    # Position in the outbox, assigned on insert: orders listings and makes cursors.
    seq: int | None = None

    @property
    def recipients(self) -> list[str]:
        return [*self.to, *self.cc, *self.bcc]


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Notification]
    next_cursor: str | None

    @classmethod
    def of_window(cls, matches: list[Notification], *, limit: int, oldest: int | None, seen: int, scan: int) -> Page:
        """A page of a windowed search (page_for_recipient): up to `limit` + 1 `matches` in a window of `seen`
        rows down to seq `oldest`. It goes on after its last item when the window held more matches, else below
        the window when the window was full (older rows may match), else nowhere."""
        items = matches[:limit]
        if len(matches) > limit and items:
            return cls(items, str(items[-1].seq))
        if seen >= scan and oldest is not None:
            return cls(items, str(oldest))
        return cls(items, None)


class NotificationStore(abc.ABC):
    """What the routes and the dispatcher do with notifications; SQL lives in the implementations."""

    @abc.abstractmethod
    async def add(self, notifications: Sequence[Notification], *, idempotency: IdempotencyRecord | None = None) -> None:
        """Store new notifications in one transaction; returns once they are on disk. Each is `queued` and due
        now, or, with a `send_at` and the status `scheduled`, due at its send_at and not counted against the
        queue limit.

        With `idempotency`, the key's record is committed in the same transaction, so neither exists without
        the other. Raises QueueFull (nothing added) when the queue limit would be passed, and
        IdempotencyKeyTaken (nothing added) when the key is already stored and not expired.
        """

    @abc.abstractmethod
    async def count_unsent(self) -> int:
        """Notifications `queued` or `sending` (not `scheduled`): cheap enough to ask on every request."""

    @abc.abstractmethod
    async def get(self, notification_id: str) -> Notification | None: ...

    @abc.abstractmethod
    async def page(self, *, status: Status | None, limit: int, cursor: str | None, tag: str | None = None) -> Page:
        """Notifications newest first; `cursor` is the `next_cursor` of the previous page. With `tag`, only those
        tagged so (the notification_tags index of migration 0008)."""

    @abc.abstractmethod
    async def page_for_recipient(
        self, *, recipient: str, status: Status | None, limit: int, cursor: str | None, scan: int
    ) -> Page:
        """Notifications newest first whose to, cc or bcc contain `recipient` (ASCII case-insensitive).

        Looks at no more than `scan` rows past `cursor`: no index holds recipients (one would cost every accept
        a write), so a rare address is found a window at a time. A page may then hold fewer than `limit` items
        and still have a `next_cursor`, where the search goes on.
        """

    @abc.abstractmethod
    async def attachment_data(self, notification_id: str) -> list[bytes]:
        """The bytes of a notification's attachments, in order (empty when it has none): read for one send only."""

    @abc.abstractmethod
    async def recover(self) -> int:
        """At start: put back to `queued` what a previous process left `sending`. Returns how many."""

    @abc.abstractmethod
    async def claim(self, limit: int, now: float) -> list[Notification]:
        """Take up to `limit` due `queued` or `scheduled` notifications (a scheduled one is due at its send_at),
        oldest due first: `sending`, one attempt more. Never a `canceled` one."""

    @abc.abstractmethod
    async def release(self, notification_ids: Sequence[str]) -> None:
        """Give back claimed notifications that were never tried: `queued`, the attempt not counted."""

    # The outcome writes take the claim's `attempt` (its attempts number): given, the write only lands while the
    # row is still `sending` under that claim, so a claimer whose claim was taken over (a lease that ran out)
    # cannot overwrite the newer claim's outcome. Each appends its HistoryEntry to `history` in the same UPDATE
    # (the newest HISTORY_LIMIT kept); `smtp_code` is the server's reply code when it gave one. `bounces` (hard
    # bounces) go on the suppression list in the outcome's transaction, and only if the outcome landed.

    async def hold(self, notification_ids: Sequence[str], now: float) -> None:
        """Keep these claims while their outcomes wait to be written (a full disk): nobody else may claim them
        meanwhile. Claims that never run out (one process per SQLite file) need nothing: the default."""
        return None

    @abc.abstractmethod
    async def mark_sent(
        self,
        notification_id: str,
        *,
        smtp_reply: str,
        refused: Sequence[Refusal],
        now: float,
        attempt: int | None = None,
        bounces: Sequence[Bounce] = (),
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
        refused: Sequence[Refusal] | None = None,
        smtp_code: int | None = None,
        outcome: Outcome = Outcome.RETRY,
        bounces: Sequence[Bounce] = (),
    ) -> None:
        """A transient failure: back to `queued`, due again at `next_attempt_at`. With `envelope`, only those
        recipients are tried again (the others already have the mail); `refused` replaces the recorded list.
        `outcome` is RETRY, or INTERRUPTED for a send that shutdown cut short."""

    @abc.abstractmethod
    async def mark_failed(
        self,
        notification_id: str,
        *,
        error: str,
        refused: Sequence[Refusal],
        now: float,
        attempt: int | None = None,
        smtp_code: int | None = None,
        bounces: Sequence[Bounce] = (),
    ) -> None: ...

    @abc.abstractmethod
    async def requeue_failed(self, notification_id: str, now: float) -> Notification | None:
        """A `failed` notification back to `queued` with its attempts reset; None unless it was `failed`."""

    @abc.abstractmethod
    async def cancel(self, notification_id: str, now: float) -> Notification | None:
        """A `scheduled` or `queued` notification to `canceled`, in one conditional UPDATE: a claim and a cancel
        cannot both win. None when it was in no such status (or does not exist)."""

    @abc.abstractmethod
    async def reschedule(self, notification_id: str, send_at: float, now: float) -> Notification | None:
        """A `scheduled` notification due at `send_at` instead, in one conditional UPDATE: a claim and a reschedule
        cannot both win. It stays `scheduled` (due at once when `send_at` has passed). None when it was not
        `scheduled` (or does not exist)."""

    @abc.abstractmethod
    async def next_due_at(self) -> float | None:
        """When the earliest `queued` or `scheduled` notification is due, or None when nothing waits."""

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call `wake` (on the event loop) when another process may have added due work.

        A store only one process writes needs nothing here (the default); a shared one (PostgreSQL) calls it
        on every insert by any replica. Best effort: the dispatcher's slow poll covers a missed wake-up.
        """
        return None
