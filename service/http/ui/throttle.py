"""The login form's brake: a client address that sends too many wrong keys is refused with 429 for a while, so a
key cannot be guessed through the page faster than LOGIN_FAILURES per LOGIN_PERIOD_SECONDS."""

from __future__ import annotations

from collections import OrderedDict

from aiolimiter import AsyncLimiter

LOGIN_FAILURES = 10
LOGIN_PERIOD_SECONDS = 60.0
# Addresses remembered at most; the least recently failed one is forgotten first, so memory stays bounded.
MAX_CLIENTS = 10_000


class LoginThrottle:
    """Wrong keys per client address, in a leaky bucket each (aiolimiter's): full means refused until it drains.
    Per process: with several replicas, each counts its own."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[str, AsyncLimiter] = OrderedDict()

    def refused(self, client: str) -> bool:
        """True while `client` has used up its wrong keys: it may not try another, right or wrong."""
        bucket = self._buckets.get(client)
        return bucket is not None and not bucket.has_capacity()

    def retry_after(self) -> int:
        """Seconds until one more attempt drains out of a full bucket, rounded up."""
        return max(1, round(LOGIN_PERIOD_SECONDS / LOGIN_FAILURES + 0.5))

    async def failed(self, client: str) -> None:
        bucket = self._buckets.pop(client, None) or AsyncLimiter(LOGIN_FAILURES, LOGIN_PERIOD_SECONDS)
        self._buckets[client] = bucket
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        if bucket.has_capacity():
            await bucket.acquire()  # never waits: there is room
