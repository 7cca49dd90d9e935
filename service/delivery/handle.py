"""What the app edge and intake see of the dispatcher, wherever it runs: in this process (Dispatcher) or in a
process of its own (DispatcherProcess). Both fit it; nothing above delivery needs to know which."""

from __future__ import annotations

from typing import Protocol


class DispatcherHandle(Protocol):
    @property
    def running(self) -> bool:
        """Claiming and sending now (readiness, the `dispatcher_running` gauge)."""
        ...

    def wake(self) -> None:
        """There may be due work: claim now instead of at the next poll."""
        ...

    async def notify(self, notification_id: str) -> None:
        """Accepted after the response: a route's background task (async, so Starlette runs it on the loop)."""
        ...
