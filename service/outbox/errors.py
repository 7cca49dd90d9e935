"""What the stores raise, whichever backend: the database is out of reach, the queue is full, a key is taken."""

from __future__ import annotations


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
