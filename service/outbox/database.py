"""The database under the stores: opening it (schema migrations included), closing it, and the health check."""

from __future__ import annotations

import abc
from importlib import resources


class Database(abc.ABC):
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
        """Raise OutboxUnavailable unless a write goes through now."""

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
