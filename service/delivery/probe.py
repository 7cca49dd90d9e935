"""The readiness probe of the SMTP server: connect and QUIT, the answer kept for a few seconds."""

from __future__ import annotations

import asyncio
import time

from service.config import Settings
from service.delivery.classify import DeliveryFailed
from service.delivery.smtp import SmtpConnection


class SmtpProbe:
    """Readiness check of the SMTP server: connect and QUIT, the answer kept for a few seconds."""

    def __init__(self, settings: Settings, *, ttl_seconds: float = 5.0) -> None:
        self.settings = settings
        self.ttl_seconds = ttl_seconds
        self._checked_at = -1e9
        self._ok = False
        self._lock = asyncio.Lock()

    async def check(self) -> bool:
        async with self._lock:
            if time.monotonic() - self._checked_at < self.ttl_seconds:
                return self._ok
            connection = SmtpConnection(self.settings)
            try:
                async with asyncio.timeout(min(self.settings.SMTP_TIMEOUT_SECONDS, 3.0)):
                    await connection.open()
                    self._ok = True
            except (DeliveryFailed, TimeoutError):
                self._ok = False
            await connection.quit()
            self._checked_at = time.monotonic()
            return self._ok
