"""The stats store: the operator's view of the queue (/metrics gauges and /v1/stats), computed from the
database so that replicas sharing one agree, and cheap at any table size (migration 0003's kept counts)."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.domain import Status


@dataclass(frozen=True, slots=True)
class QueueGauges:
    """What a metrics scrape reads: cheap at any table size (kept counts and one index lookup)."""

    counts: dict[Status, int]
    oldest_queued_at: float | None


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """A notification whose last attempt failed: retrying (`queued`/`sending`) or `failed`."""

    notification_id: str
    status: Status
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
    # The same minutes, with the notifications that ended `failed` in each (by their last update).
    failed_per_minute: list[tuple[float, int]] = field(default_factory=list)

    @classmethod
    def from_rows(
        cls,
        gauges: QueueGauges,
        minutes: range,
        sent: Mapping[int, int],
        failed: Mapping[int, int],
        errors: Iterable[Mapping[str, Any]],
    ) -> QueueStats:
        """Both backends' answer from what they read: per-minute counts keyed by minute number (missing minutes
        are 0) and the error rows with the columns id, status, attempts, last_error, updated_at, request_id."""
        return cls(
            gauges=gauges,
            sent_per_minute=[(minute * 60.0, sent.get(minute, 0)) for minute in minutes],
            failed_per_minute=[(minute * 60.0, failed.get(minute, 0)) for minute in minutes],
            recent_errors=[
                ErrorEntry(
                    notification_id=row["id"],
                    status=Status(row["status"]),
                    attempts=row["attempts"],
                    error=row["last_error"],
                    at=row["updated_at"],
                    request_id=row["request_id"],
                )
                for row in errors
            ],
        )


class StatsStore(abc.ABC):
    @abc.abstractmethod
    async def queue_gauges(self) -> QueueGauges:
        """Notifications per status and when the oldest queued one was accepted, without a table scan."""

    @abc.abstractmethod
    async def queue_stats(self, now: float, *, minutes: int, errors: int) -> QueueStats:
        """The gauges, mail sent and failed per minute over the last `minutes` and the `errors` latest errors."""
