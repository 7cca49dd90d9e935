"""The suppression store: the addresses no new notification is sent to, with why and since when.

Hard bounces are written by the notification store's outcome writes (in their transaction); this store lists,
adds by hand, lifts, and gives the list's version and keys to the in-memory copy (service/events/suppressions.py).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal

Source = Literal["hard_bounce", "manual"]


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str
    source: Source
    reason: str
    suppressing: bool
    created_at: float
    smtp_reply: str | None = None
    notification_id: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class SuppressionPage:
    items: list[Suppression]
    next_cursor: str | None


class SuppressionStore(abc.ABC):
    @abc.abstractmethod
    async def suppress(self, address: str, *, reason: str, now: float) -> Suppression:
        """Suppress `address` by hand (a recorded-only bounce becomes suppressing); returns the stored entry."""

    @abc.abstractmethod
    async def lift(self, address: str) -> bool:
        """Lift `address` (compared as mailbox_key does); False when it was not on the list."""

    @abc.abstractmethod
    async def get(self, address: str) -> Suppression | None: ...

    @abc.abstractmethod
    async def page(self, *, limit: int, cursor: str | None) -> SuppressionPage:
        """Newest first; `cursor` is the previous page's `next_cursor`."""

    @abc.abstractmethod
    async def version(self) -> int:
        """A number that moves with every change to the list: one row read."""

    @abc.abstractmethod
    async def suppressing_keys(self) -> tuple[int, frozenset[str]]:
        """The version and the keys of every address that is suppressed, read together."""


COLUMNS = "seq, address, source, reason, smtp_reply, notification_id, suppressing, created_at"

# What a hard bounce is stored as: its reason; the server's reply is kept beside it.
HARD_BOUNCE_REASON = "hard bounce"


def suppression_from_row(row: Any) -> Suppression:
    """From a row of the suppressions table (a sqlite3.Row or an asyncpg.Record)."""
    return Suppression(
        seq=row["seq"],
        address=row["address"],
        source=row["source"],
        reason=row["reason"],
        smtp_reply=row["smtp_reply"],
        notification_id=row["notification_id"],
        suppressing=bool(row["suppressing"]),
        created_at=row["created_at"],
    )
