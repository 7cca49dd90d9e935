"""A small filesystem of the test's own (a tmpfs, mounted as root), filled to the last byte and freed again:
the outbox on a full disk, for real. Skips where mounting is not allowed."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


class SmallDisk:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self, outbox: Path) -> None:
        """Leave no byte free. The outbox's WAL is emptied first, so that its next write must grow the WAL:
        a WAL that already holds room would take small writes on a full disk (as on a real one, sometimes)."""
        deadline = time.monotonic() + 10
        with sqlite3.connect(outbox) as db:
            while db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] != 0:
                assert time.monotonic() < deadline, "the outbox's WAL could not be emptied"
                time.sleep(0.01)
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 20, 4096, 1):
                while True:
                    try:
                        os.write(fd, b"\0" * size)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self, size: int | None = None) -> None:
        """Give `size` bytes back (every byte when None)."""
        if size is None:
            self.filler.unlink(missing_ok=True)
            return
        os.truncate(self.filler, max(0, self.filler.stat().st_size - size))


@contextmanager
def small_disk(parent: Path, size: str = "8m") -> Iterator[SmallDisk]:
    path = parent / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
