"""`/v1/stats`: the queue at a glance, as JSON, for people who don't run Prometheus.

Computed from the outbox, not from this process' counters, so every replica sharing one database answers
the same.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from service.http.deps import StatsStoreDep
from service.http.schemas import QueueStats, RecentError, SentInMinute, StatusCounts

router = APIRouter(prefix="/v1/stats", tags=["monitoring"])


def _utc(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


@router.get("", response_model=QueueStats, summary="Counts per status, queue age, sends per minute, last errors")
async def stats(
    store: StatsStoreDep,
    minutes: Annotated[int, Query(ge=1, le=60, description="How many one-minute buckets of sends")] = 15,
    errors: Annotated[int, Query(ge=0, le=100, description="How many of the latest errors")] = 10,
) -> QueueStats:
    now = time.time()
    found = await store.queue_stats(now, minutes=minutes, errors=errors)
    oldest = found.gauges.oldest_queued_at
    return QueueStats(
        generated_at=_utc(now),
        counts=StatusCounts(**{status.value: count for status, count in found.gauges.counts.items()}),
        oldest_queued_age_seconds=None if oldest is None else round(max(0.0, now - oldest), 3),
        sent_per_minute=[SentInMinute(minute=_utc(start), sent=sent) for start, sent in found.sent_per_minute],
        recent_errors=[
            RecentError(
                id=e.notification_id,
                status=e.status,
                attempts=e.attempts,
                error=e.error,
                at=_utc(e.at),
                request_id=e.request_id,
            )
            for e in found.recent_errors
        ],
    )
