"""The activity page's chart: mail sent and failed per minute, as the geometry of an inline SVG drawn by the
server (no chart library, no script). A stall is a gap in the bars; a wave of failures is red."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

BAR_STEP = 12
BAR_WIDTH = 10
PLOT_HEIGHT = 100


@dataclass(frozen=True, slots=True)
class Bar:
    x: int
    sent: int
    failed: int
    sent_height: float
    failed_height: float
    label: str


@dataclass(frozen=True, slots=True)
class MinuteChart:
    bars: list[Bar]
    top: int
    width: int
    height: int
    sent: int
    failed: int

    @property
    def half(self) -> str:
        return f"{self.top / 2:g}"


def nice_top(value: int) -> int:
    """The scale's top: the smallest of 1, 2 or 5 times a power of ten at or above `value` (at least 5)."""
    if value <= 5:
        return 5
    power: int = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def minute_chart(sent_per_minute: list[tuple[float, int]], failed_per_minute: list[tuple[float, int]]) -> MinuteChart:
    """Bars for (minute start, count) series, oldest first; the failed one may be shorter (a store without it)."""
    failed = dict(failed_per_minute)
    top = nice_top(max((count + failed.get(minute, 0) for minute, count in sent_per_minute), default=0))
    bars = []
    for index, (minute, sent) in enumerate(sent_per_minute):
        lost = failed.get(minute, 0)
        at = datetime.fromtimestamp(minute, UTC).strftime("%H:%M UTC")
        bars.append(
            Bar(
                x=index * BAR_STEP,
                sent=sent,
                failed=lost,
                sent_height=round(PLOT_HEIGHT * sent / top, 2),
                failed_height=round(PLOT_HEIGHT * lost / top, 2),
                label=f"{at}: {sent} sent, {lost} failed",
            )
        )
    return MinuteChart(
        bars=bars,
        top=top,
        width=len(bars) * BAR_STEP,
        height=PLOT_HEIGHT,
        sent=sum(bar.sent for bar in bars),
        failed=sum(bar.failed for bar in bars),
    )
