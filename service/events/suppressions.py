"""The suppression list as the accept path sees it: an in-memory copy of the suppressed addresses, kept in step
with the outbox (the source of truth, shared with the dispatcher's process and other replicas), and the narrowing
of a new notification's envelope. docs/events.md has the rules."""

from __future__ import annotations

import asyncio
import contextlib
from email.utils import parseaddr

import structlog

from service.domain import Refusal, mailbox_key
from service.outbox import Notification, OutboxUnavailable, Suppression, SuppressionStore

log = structlog.get_logger("service.events.suppressions")

# How a suppressed recipient shows in `refused_recipients`: 550 (RFC 5321: mailbox unavailable) because the
# address is refused for good, as a 5xx from a server is; the message says it was us, not a server.
SUPPRESSED_CODE = 550
SUPPRESSED_MESSAGE = "suppressed: the address is on the suppression list (DELETE /v1/suppressions/{address} lifts it)"


def envelope_address(address: str) -> str:
    """`Name <user@example.com>` → `user@example.com`; a bare address (most are) as it is.

    A recipient is already normalized (service/intake/request.py), so its addr-spec is what the last `<…>`
    holds; sliced rather than parsed (parseaddr: ~12 µs a recipient, on every accept)."""
    if not address.endswith(">"):
        return address
    start = address.rfind("<")
    return address[start + 1 : -1] if start >= 0 else parseaddr(address)[1]


class SuppressionList:
    """The suppressed addresses, in memory: a set lookup per recipient at accept, no database round trip.

    Every `refresh_seconds` one row (the list's version) is read, and the list reloaded only when it moved, so
    a change made elsewhere (a bounce in the dispatcher's process, another replica's DELETE) is seen within that;
    this process' own POST and DELETE are seen at once."""

    def __init__(self, store: SuppressionStore, *, refresh_seconds: float) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._keys: frozenset[str] = frozenset()
        self._version = -1

    @property
    def version(self) -> int:
        """The list's version this copy holds (-1 before the first load)."""
        return self._version

    async def refresh(self) -> None:
        if await self.store.version() == self._version:
            return
        self._version, self._keys = await self.store.suppressing_keys()
        log.debug("suppressions_loaded", count=len(self._keys), version=self._version)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except OutboxUnavailable as exc:
                # The copy stays as it was; the next round tries again.
                log.warning("suppressions_refresh_failed", error=str(exc))

    def is_suppressed(self, address: str) -> bool:
        return bool(self._keys) and mailbox_key(envelope_address(address)) in self._keys

    def narrow(self, notification: Notification) -> list[str]:
        """Drop suppressed recipients from the envelope (the headers still name them) and list them, as refused,
        in `refused_recipients`. Returns the suppressed addresses; all of them means nobody is left to send to."""
        if not self._keys:
            return []
        suppressed: list[str] = []
        envelope: dict[str, str] = {}
        for address in notification.recipients:
            spec = envelope_address(address)
            if mailbox_key(spec) in self._keys:
                suppressed.append(spec)
            else:
                # As the delivery's envelope_recipients() would make it: one RCPT per address.
                envelope.setdefault(spec.lower(), spec)
        if suppressed and envelope:
            notification.envelope = list(envelope.values())
            notification.refused_recipients = [
                Refusal(address=spec, code=SUPPRESSED_CODE, message=SUPPRESSED_MESSAGE) for spec in suppressed
            ]
        return suppressed

    async def suppress(self, address: str, *, reason: str, now: float) -> Suppression:
        added = await self.store.suppress(address, reason=reason, now=now)
        with contextlib.suppress(OutboxUnavailable):
            await self.refresh()
        return added

    async def lift(self, address: str) -> bool:
        removed = await self.store.lift(address)
        with contextlib.suppress(OutboxUnavailable):
            await self.refresh()
        return removed
