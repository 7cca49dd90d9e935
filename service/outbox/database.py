"""The database under the stores: opening it (schema migrations included), closing it, and the health check."""

from __future__ import annotations

import abc
from importlib import resources

import structlog

log = structlog.get_logger("service.outbox")


class Database(abc.ABC):
    # The last store write that failed, until one succeeds again: readiness fails meanwhile, since a nearly full
    # disk still takes a heartbeat's few bytes long after it refused a notification.
    _write_failure: str | None = None

    @property
    def write_failure(self) -> str | None:
        """Why the last write failed, while no write has succeeded since; None when writes go through."""
        return self._write_failure

    def note_write(self, failure: Exception | None) -> None:
        """A store write failed (`failure`) or went through (None); logged once per change of state."""
        if failure is not None:
            if self._write_failure is None:
                log.error("outbox_writes_failing", error=str(failure))
            self._write_failure = str(failure)
        elif self._write_failure is not None:
            self._write_failure = None
            log.info("outbox_writes_recovered")

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema and make the stores ready."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The number of the last schema migration applied."""

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Raise OutboxUnavailable unless a write goes through now. After a failed write, the probe writes as
        much as a notification may need, and only its success clears `write_failure`."""

    @property
    def lock_fd(self) -> int | None:
        """A descriptor whose lock the dispatcher's process must inherit (a SQLite file's); None when none."""
        return None


def read_migrations(backend: str) -> list[tuple[int, str, str]]:
    """A backend's schema migrations, `migrations/<backend>/NNNN_name.sql`, as (number, name, script) in order."""
    found = []
    for entry in (resources.files("service.outbox") / "migrations" / backend).iterdir():
        if entry.name.endswith(".sql"):
            number, name = entry.name.removesuffix(".sql").split("_", 1)
            found.append((int(number), name, entry.read_text(encoding="utf-8")))
    return sorted(found)
