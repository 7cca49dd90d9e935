"""The readiness probe of the SMTP server: connect, TLS and login as the dispatcher does, then QUIT; the answer,
with why it failed, kept for a few seconds."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from service.config import Settings
from service.delivery.classify import DeliveryFailed
from service.delivery.smtp import ConnectionFailed, SmtpConnection


@dataclass(frozen=True, slots=True)
class SmtpCheck:
    """One probe's answer: `reason` in a few stable words when it failed, `error` as the server or TLS said it,
    and `warnings` for what works but an operator should know (mail in clear text, certificates unchecked)."""

    ok: bool
    reason: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


class SmtpProbe:
    """Readiness check of the SMTP server: connect and QUIT, the answer kept for a few seconds."""

    def __init__(self, settings: Settings, *, ttl_seconds: float = 5.0) -> None:
        self.settings = settings
        self.ttl_seconds = ttl_seconds
        self._checked_at = -1e9
        self._last = SmtpCheck(ok=False)
        self._lock = asyncio.Lock()

    async def check(self) -> bool:
        return (await self.check_details()).ok

    async def check_details(self) -> SmtpCheck:
        async with self._lock:
            if time.monotonic() - self._checked_at < self.ttl_seconds:
                return self._last
            self._last = await self._probe()
            self._checked_at = time.monotonic()
            return self._last

    async def _probe(self) -> SmtpCheck:
        warnings = self._setting_warnings()
        connection = SmtpConnection(self.settings)
        timeout = min(self.settings.SMTP_TIMEOUT_SECONDS, 3.0)
        try:
            async with asyncio.timeout(timeout):
                await connection.open()
            if connection.offers_starttls:
                warnings.append("the server offers STARTTLS but SMTP_STARTTLS is off: mail and login go in clear text")
            result = SmtpCheck(ok=True, warnings=warnings)
        except ConnectionFailed as failure:
            result = SmtpCheck(ok=False, reason=failure.problem, error=failure.reason, warnings=warnings)
        except DeliveryFailed as failure:
            result = SmtpCheck(ok=False, reason="connection failed", error=failure.reason, warnings=warnings)
        except TimeoutError:
            result = SmtpCheck(ok=False, reason="timed out", error=f"no answer within {timeout:g}s", warnings=warnings)
        await connection.quit()
        return result

    def _setting_warnings(self) -> list[str]:
        if not self.settings.SMTP_VERIFY_CERTS:
            return ["SMTP_VERIFY_CERTS is false: the relay's certificate and host name are not checked"]
        return []
