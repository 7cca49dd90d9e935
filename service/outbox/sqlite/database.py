"""The SQLite outbox's file: one file in WAL mode, one connection owned by one thread, its lock, its migrations,
and the group-commit writer the notification store hands its writes to.

sqlite3 blocks, so every statement runs on a single dedicated thread, never on the event loop (but in the
dispatcher's own process, which asks for `on_loop`: see SqliteDatabase). Writes handed to
the group commit are written together: what arrives while a commit is on disk goes in the next transaction,
and each caller is answered only after the transaction holding its write has committed.
"""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

from service.outbox.database import Database, read_migrations
from service.outbox.errors import OutboxUnavailable

T = TypeVar("T")
W = TypeVar("W")

# How long a statement waits for another connection's write lock before it fails.
BUSY_TIMEOUT_MS = 30_000
PROBE_BUSY_TIMEOUT_MS = 1_000
# Between tries while another process (the dispatcher's) holds the write lock. SQLite's own busy handler sleeps
# 1, 2, 5, 10, 15… ms between tries, so a lock held for a millisecond could cost the HTTP process 30 ms
# (measured under load: p95 9 ms, max 32 ms to begin a transaction); tried every 0.2 ms, a wait lasts about
# as long as the lock is held.
LOCK_RETRY_SECONDS = 0.0002
# What the readiness probe writes once a write has failed (SQLITE_FULL): room for a large notification, so that
# readiness passes again only when the disk has room, not when a heartbeat's few bytes fit.
ROOM_BYTES = 256 * 1024
# In the dispatcher's own process, the loop turns a group commit lets pass before it takes its group: the workers'
# outcomes that arrive meanwhile join the same transaction (a draining dispatcher: ~2.2 outcomes per transaction
# without, ~3.6 with; benchmarks/drain_cpu.py). A worker waits those turns for its outcome while the others send.
GATHER_TURNS = 8


def split_statements(script: str) -> list[str]:
    """A migration file's statements, each whole: a trigger's BEGIN … END, with the semicolons inside it, is
    one. (executescript() would do the splitting, but it commits first, and a migration must be atomic.)"""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if any(line.strip() and not line.strip().startswith("--") for line in pending.splitlines()):
        statements.append(pending.strip())
    return statements


def transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """`work(db)` in one write transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException:
        # A COMMIT that failed (SQLITE_FULL) may leave the transaction open, and SQLite may already have rolled
        # it back: either way the connection must come out of it usable, with the first error raised.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


class SqliteDatabase(Database):
    def __init__(
        self, path: Path | str, *, synchronous: str = "NORMAL", lock: bool = True, on_loop: bool = False
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        # False only in the dispatcher's own process, which holds its parent's lock (inherited, not taken).
        self.lock = lock
        # True only in the dispatcher's own process: statements run on the event loop's thread. That loop serves
        # nothing a statement's milliseconds would delay (its sends wait for the outbox anyway), and the trip to
        # the outbox's thread and back, the GIL handed over each way, cost more CPU than the statements (a drain:
        # ~8% of the CPU per mail), and held the write lock longer: the HTTP process' accepts do not wait more
        # for it (docs/profile.md has the runs).
        self.on_loop = on_loop
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._lock_file: BinaryIO | None = None
        self._group_commits: list[GroupCommit[Any]] = []

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._connect)
        except BaseException as exc:
            # Nothing stays held by an outbox that did not open: not the file's lock, not the thread.
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None
            self._thread.shutdown(wait=False)
            if isinstance(exc, sqlite3.Error):
                raise OutboxUnavailable(f"outbox {self.path}: {exc}") from exc
            raise
        for group_commit in self._group_commits:
            group_commit.start()

    @property
    def lock_fd(self) -> int | None:
        """The locked file's descriptor, for the dispatcher's process to inherit: the lock then lasts until
        both processes are gone."""
        return self._lock_file.fileno() if self._lock_file is not None else None

    def _lock(self) -> None:
        """One service per outbox file: its claims are its own, and a second service would put the first one's
        live claims back in the queue at its start (sending them twice). The lock is the kernel's (flock), so it
        goes with the process, even on SIGKILL."""
        lock_file = open(f"{self.path}.lock", "a+b")  # noqa: SIM115 - held open for the outbox's lifetime
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise OutboxUnavailable(
                f"outbox {self.path} is in use by another process; one process per SQLite outbox"
                " (several replicas share a PostgreSQL outbox: OUTBOX_URL)"
            ) from None
        self._lock_file = lock_file

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.lock:
            self._lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly what we say.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            self._prepare(db)
        except BaseException:
            # Not a database, a migration that failed, a disk that is full: nothing stays open behind the error.
            db.close()
            raise
        self._db = db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        # Foreign keys off while migrating (the pragma is a no-op inside a transaction), as SQLite's table rebuild
        # asks (0009): with them on, dropping the old table would delete, or cascade to, the rows that reference
        # it. They are checked before the commit instead, and on for everything after.
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            migrated = False
            for number, _name, script in read_migrations("sqlite"):
                if number > version:
                    for statement in split_statements(script):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={number}")
                    migrated = True
            broken = db.execute("PRAGMA foreign_key_check").fetchone() if migrated else None
            if broken is not None:
                raise sqlite3.IntegrityError(f"migration left a foreign key broken: {tuple(broken)}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("PRAGMA foreign_keys=ON")
        # From here on a locked file fails at once and _call() tries again, every LOCK_RETRY_SECONDS (the
        # migrations above waited in SQLite's own handler).
        db.execute("PRAGMA busy_timeout=0")

    async def close(self) -> None:
        for group_commit in self._group_commits:
            # Drained before the connection goes: every write that was handed in is answered.
            await group_commit.stop()
        await self.read(lambda db: db.close())
        self._db = None
        self._thread.shutdown(wait=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    async def schema_version(self) -> int:
        return int(await self.read(lambda db: db.execute("PRAGMA user_version").fetchone()[0]))

    async def check_writable(self) -> None:
        now = time.time()
        failure = self.write_failure
        room = ROOM_BYTES if failure is not None else 0

        def heartbeat() -> None:
            # Its own short-lived connection on its own thread: the probe must neither queue behind the outbox's
            # thread (which may be waiting out a 30 s lock) nor wait long itself — it answers within a second.
            db = sqlite3.connect(self.path, isolation_level=None, timeout=PROBE_BUSY_TIMEOUT_MS / 1000)
            try:
                transaction(
                    db,
                    lambda db: db.execute(
                        "INSERT OR REPLACE INTO heartbeat (id, at, room) VALUES (1, ?, CASE WHEN ? > 0"
                        " THEN zeroblob(?) END)",
                        (now, room, room),
                    ),
                )
            finally:
                db.close()

        if self._db is None:
            raise OutboxUnavailable(f"outbox {self.path}: not open")
        try:
            await asyncio.to_thread(heartbeat)
        except sqlite3.Error as exc:
            if failure is not None:
                raise OutboxUnavailable(
                    f"outbox {self.path}: a write failed ({failure}), and {room // 1024} KiB do not fit yet: {exc}"
                ) from exc
            raise OutboxUnavailable(f"outbox {self.path}: {exc}") from exc
        if failure is not None:
            self.note_write(None)

    # -- the stores' way in ---------------------------------------------------------------------------------

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(db, *args)` on the outbox's thread (on the event loop with `on_loop`), outside any transaction of
        ours (reads)."""
        try:
            if self.on_loop and self._db is not None:
                return self._call(fn, args)
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._call, fn, args)
        except sqlite3.Error as exc:
            raise OutboxUnavailable(f"outbox {self.path}: {exc}") from exc

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(db)` in one write transaction on the outbox's thread (the triggers count what it inserts)."""

        def write(db: sqlite3.Connection) -> tuple[T, bool]:
            before = db.total_changes
            result = transaction(db, fn)
            return result, db.total_changes > before

        try:
            result, changed = await self.read(write)
        except OutboxUnavailable as exc:
            self.note_write(exc)
            raise
        if changed:
            # A claim that found nothing wrote nothing: it proves no room.
            self.note_write(None)
        return result

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """`fn(db)`, tried again while another connection holds the lock it needs (up to BUSY_TIMEOUT_MS): a
        transaction that met the lock was rolled back whole, so the next try starts clean."""
        if self._db is None:
            raise sqlite3.ProgrammingError("the outbox is not open")
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return fn(self._db, *args)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(LOCK_RETRY_SECONDS)

    def group_commit(
        self, write_group: Callable[[sqlite3.Connection, list[W]], list[Exception | None]]
    ) -> GroupCommit[W]:
        """A group-commit writer for a store's writes, running while the database is open. `write_group` writes
        a group inside one transaction and says, per write, why it was refused (None: it went in)."""
        group_commit = GroupCommit(self, write_group, gather_turns=GATHER_TURNS if self.on_loop else 0)
        self._group_commits.append(group_commit)
        return group_commit


class GroupCommit(Generic[W]):
    """Writes handed in while a commit is on disk, written together in the next transaction."""

    def __init__(
        self,
        database: SqliteDatabase,
        write_group: Callable[[sqlite3.Connection, list[W]], list[Exception | None]],
        *,
        gather_turns: int = 0,
    ) -> None:
        self._database = database
        self._write_group = write_group
        self._gather_turns = gather_turns
        self._pending: list[tuple[W, asyncio.Future[None]]] = []
        self._pending_added = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        """False before the database opened and once it began to close: nothing would write a write."""
        return self._writer is not None and not self._closing

    def start(self) -> None:
        self._closing = False
        self._writer = asyncio.create_task(self._write_pending_forever(), name="outbox-writer")

    async def stop(self) -> None:
        if self._writer is not None:
            # The writer drains what is pending before it returns: every write that was handed in is answered.
            self._closing = True
            self._pending_added.set()
            await self._writer
            self._writer = None

    async def write(self, write: W) -> None:
        """Hand `write` to the writer task; return once the transaction holding it has committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((write, future))
        self._pending_added.set()
        await future

    async def _write_pending_forever(self) -> None:
        while not (self._closing and not self._pending):
            await self._pending_added.wait()
            for _ in range(self._gather_turns):
                await asyncio.sleep(0)
            self._pending_added.clear()
            if self._pending:
                batch, self._pending = self._pending, []
                await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[W, asyncio.Future[None]]]) -> None:
        writes = [write for write, _ in batch]
        try:
            refusals = await self._database.read(lambda db: transaction(db, lambda db: self._write_group(db, writes)))
        except Exception as exc:
            if len(batch) > 1:
                # One request's rows broke the shared transaction: each request again in its own, so only the
                # one at fault hears of it.
                for entry in batch:
                    await self._write_batch([entry])
                return
            if isinstance(exc, OutboxUnavailable):
                self._database.note_write(exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            self._database.note_write(None)
            for (_, future), refusal in zip(batch, refusals, strict=True):
                if future.done():
                    continue
                if refusal is None:
                    future.set_result(None)
                else:
                    future.set_exception(refusal)
