"""The idempotency store: each Idempotency-Key's first answer, kept for replays until it expires.

A record is written only through NotificationStore.add, in the transaction of the notifications it answers for.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


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


class IdempotencyStore(abc.ABC):
    @abc.abstractmethod
    async def get(self, scope: str, key: str, now: float) -> IdempotencyRecord | None:
        """The stored record of an Idempotency-Key, or None when unknown or expired."""

    @abc.abstractmethod
    async def sweep(self, now: float) -> int:
        """Forget expired Idempotency-Keys. Returns how many."""
