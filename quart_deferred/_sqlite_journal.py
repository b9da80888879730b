"""The SQLite journal: one file, WAL mode, writes committed in groups.

Requests do not pay a commit each: writes are queued, and everything queued
is run in one transaction and committed once, then every waiter of that
group is woken with one call per event loop. Two ways, by
``QUART_DEFERRED_JOURNAL_SYNC``:

- ``"normal"`` (the default): the group is written on the event loop, once
  per pass of the loop, with ``synchronous=NORMAL``. A commit is then a write
  into the WAL file, no ``fsync``: tens of microseconds, which the loop pays
  rather than a hand-over to a thread (which waits for the GIL, up to its
  5 ms switch interval under load). What is committed survives the process
  (SIGKILL, a crash); a power loss or an operating system crash may lose the
  last commits.
- ``"full"``: the group is written on a thread of its own, with
  ``synchronous=FULL``: each commit is ``fsync``-ed, and survives a power
  loss too. While one group commits, the next gathers.

Several processes may share the file: SQLite's own locking orders their
transactions (``BEGIN IMMEDIATE``, a busy timeout of 10 s).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Collection
import logging
import os
import sqlite3
import threading
import time
from typing import Any

from ._journal import JournalError, Record

logger = logging.getLogger("quart_deferred")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quart_deferred_jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    arguments TEXT NOT NULL,
    origin TEXT NOT NULL,
    created REAL NOT NULL,
    not_before REAL NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    owner TEXT,
    lease_until REAL,
    updated REAL NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS quart_deferred_jobs_by_state
    ON quart_deferred_jobs (state, updated);
"""
_COLUMNS = "id, name, arguments, origin, created, not_before, attempt, state, owner, error"

CHECKPOINT_EVERY = 1.0  # Seconds between checkpoints of the WAL ("normal").

Operation = Callable[[sqlite3.Connection], Any]


class SQLiteJournal:
    """A journal in one SQLite file, shared by every process that names it."""

    def __init__(self, url: str, sync: str = "normal") -> None:
        self.url = url
        self.sync = sync
        self._connection: sqlite3.Connection | None = None  # "normal": the loop's writer.
        self._flushing: asyncio.Handle | None = None
        self._done: list[str] = []  # Ids of jobs that succeeded, not yet written.
        self._done_lock = threading.Lock()
        self.path = url.removeprefix("sqlite:///")  # sqlite:////abs/path: an absolute path.
        self._queue: deque[tuple[Operation, asyncio.Future[Any] | None]] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    # Opening and closing

    def connect(self) -> sqlite3.Connection:
        """Open a connection of its own (the CLI's, or the writer's), the schema in place."""
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            msg = (
                f"The journal {self.url} cannot be opened: its folder {folder} does not exist. "
                "Create it (writable by the server's user), or point QUART_DEFERRED_JOURNAL "
                "elsewhere."
            )
            raise JournalError(msg)
        try:
            connection = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={self.sync.upper()}")
            connection.executescript(_SCHEMA)
        except sqlite3.Error as error:
            msg = (
                f"The journal {self.url} cannot be opened for writing ({error}). Check that "
                f"the server's user may write {os.path.abspath(self.path)} and its folder, "
                "or point QUART_DEFERRED_JOURNAL elsewhere."
            )
            raise JournalError(msg) from error
        return connection

    def open(self) -> None:
        if self._thread is not None or self._connection is not None:
            return
        connection = self.connect()  # Here, so that an error is raised at the start.
        if self.sync == "normal":
            # Checkpoints (the WAL copied back into the file, with an fsync) on a thread
            # of their own, not in the commit that happens to cross the threshold.
            connection.execute("PRAGMA wal_autocheckpoint=0")
            self._connection = connection
            self._closing = False
            self._thread = threading.Thread(
                target=self._checkpoint, name="quart-deferred-checkpoint", daemon=True
            )
            self._thread.start()
            return
        self._closing = False
        self._thread = threading.Thread(
            target=self._write, args=(connection,), name="quart-deferred-journal", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        connection = self._connection
        if connection is not None:
            self._flush()
            connection.close()
            self._connection = None
        thread = self._thread
        if thread is None:
            return
        with self._ready:
            self._closing = True
            self._ready.notify()
        thread.join(timeout=10.0)
        self._thread = None

    # The writer thread

    def _submit(self, operation: Operation, *, wait: bool) -> asyncio.Future[Any] | None:
        loop = asyncio.get_running_loop()
        future = loop.create_future() if wait else None
        if self._connection is not None:  # "normal": written on the loop, once per pass.
            self._queue.append((operation, future))
            if self._flushing is None:
                self._flushing = loop.call_soon(self._flush)
            return future
        with self._ready:
            self._queue.append((operation, future))
            self._ready.notify()
        return future

    def _flush(self) -> None:
        self._flushing = None
        if self._queue and self._connection is not None:
            group = list(self._queue)
            self._queue.clear()
            self._commit(self._connection, group)

    def _checkpoint(self) -> None:
        connection = self.connect()
        # No fsync in the copy either: a write to the WAL on the loop would wait behind it
        # (the file system orders them), and "normal" does not promise power-loss safety.
        connection.execute("PRAGMA synchronous=OFF")
        try:
            while True:
                with self._ready:
                    self._ready.wait(timeout=CHECKPOINT_EVERY)
                    closing = self._closing
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as error:  # Busy, or the disk: the next one tries again.
                    logger.debug("Journal checkpoint of %s failed: %s", self.url, error)
                if closing:
                    return
        finally:
            connection.close()

    def _write(self, connection: sqlite3.Connection) -> None:
        queue = self._queue
        while True:
            with self._ready:
                while not queue and not self._closing:
                    self._ready.wait()
                if not queue:  # Closing, and everything queued is written.
                    break
                group = list(queue)
                queue.clear()
            self._commit(connection, group)
        connection.close()

    def _commit(
        self,
        connection: sqlite3.Connection,
        group: list[tuple[Operation, asyncio.Future[Any] | None]],
    ) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for operation, future in group:
                result = operation(connection)
                if future is not None:
                    results.append((future, result, None))
            connection.execute("COMMIT")
        except Exception as error:  # sqlite3's, or a bug in an operation: never the thread's end.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            logger.error(
                "Quart-Deferred could not write %d changes to the journal %s: %s",
                len(group),
                self.url,
                error,
            )
            failure = JournalError(f"The journal {self.url} could not be written: {error}")
            results = [(future, None, failure) for _, future in group if future is not None]
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for item in results:
            by_loop.setdefault(item[0].get_loop(), []).append(item)
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, items in by_loop.items():
            if loop is here:  # Written on the loop: no wake-up through its pipe needed.
                loop.call_soon(_settle, items)
                continue
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # That loop has closed: nobody waits any more.
                pass

    # The protocol

    def add(
        self, records: Collection[Record], owner: str, lease_until: float
    ) -> asyncio.Future[None]:
        rows = [
            (
                r.id,
                r.name,
                r.arguments,
                r.origin,
                r.created,
                r.not_before,
                r.attempt,
                r.state,
                owner,
                lease_until,
                r.created,
                r.error,
            )
            for r in records
        ]

        def insert(connection: sqlite3.Connection) -> None:
            connection.executemany(
                "INSERT OR REPLACE INTO quart_deferred_jobs (id, name, arguments, origin, created, "
                "not_before, attempt, state, owner, lease_until, updated, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        future = self._submit(insert, wait=True)
        assert future is not None
        return future

    def finished(self, job_id: str) -> None:
        with self._done_lock:  # The writer thread ("full") swaps the list.
            done = self._done
            done.append(job_id)
        if len(done) == 1:  # The first since the last write: one statement for them all.
            self._submit(self._mark_done, wait=False)

    def _mark_done(self, connection: sqlite3.Connection) -> None:
        with self._done_lock:
            done, self._done = self._done, []
        now = time.time()
        connection.executemany(
            "UPDATE quart_deferred_jobs SET state = 'done', owner = NULL, lease_until = NULL, "
            "updated = ? WHERE id = ?",
            [(now, job_id) for job_id in done],
        )

    def forget(self, job_ids: Collection[str]) -> None:
        rows = [(job_id,) for job_id in job_ids]
        self._submit(
            lambda c: c.executemany("DELETE FROM quart_deferred_jobs WHERE id = ?", rows),
            wait=False,
        )

    def retrying(self, job_id: str, attempt: int, not_before: float, error: str) -> None:
        self._update("attempt = ?, not_before = ?, error = ?", job_id, attempt, not_before, error)

    def dead(self, job_id: str, attempt: int, error: str) -> None:
        self._update(
            "state = 'dead', attempt = ?, error = ?, owner = NULL, lease_until = NULL",
            job_id,
            attempt,
            error,
        )

    def _update(self, changes: str, job_id: str, *values: object) -> None:
        sql = f"UPDATE quart_deferred_jobs SET {changes}, updated = ? WHERE id = ?"
        now = time.time()
        self._submit(lambda c: c.execute(sql, (*values, now, job_id)), wait=False)

    def claim(
        self,
        owner: str,
        names: Collection[str],
        now: float,
        lease_until: float,
        dead: Collection[str],
    ) -> asyncio.Future[list[Record]]:
        names, dead = list(names), list(dead)

        def take(connection: sqlite3.Connection) -> list[Record]:
            if not names:
                return []
            known = ", ".join("?" * len(names))
            ended = ", ".join("?" * len(dead)) or "NULL"
            free = (
                f"state = 'waiting' AND name IN ({known}) AND (owner IS NULL OR lease_until < ? "
                f"OR owner IN ({ended}))"
            )
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM quart_deferred_jobs WHERE {free} ORDER BY created",
                (*names, now, *dead),
            ).fetchall()
            connection.executemany(
                "UPDATE quart_deferred_jobs SET owner = ?, lease_until = ? WHERE id = ?",
                [(owner, lease_until, row[0]) for row in rows],
            )
            return [Record(*row) for row in rows]

        future = self._submit(take, wait=True)
        assert future is not None
        return future

    def others(self, names: Collection[str]) -> asyncio.Future[list[Record]]:
        names = list(names)
        known = ", ".join("?" * len(names)) or "''"  # NOT IN (NULL) would match nothing.
        sql = (
            f"SELECT {_COLUMNS} FROM quart_deferred_jobs "
            f"WHERE state = 'waiting' AND name NOT IN ({known})"
        )
        future = self._submit(
            lambda c: [Record(*row) for row in c.execute(sql, names).fetchall()], wait=True
        )
        assert future is not None
        return future

    def holders(self, now: float) -> asyncio.Future[list[str]]:
        sql = (
            "SELECT DISTINCT owner FROM quart_deferred_jobs "
            "WHERE state = 'waiting' AND owner IS NOT NULL AND lease_until >= ?"
        )
        future = self._submit(
            lambda c: [row[0] for row in c.execute(sql, (now,)).fetchall()], wait=True
        )
        assert future is not None
        return future

    def renew(self, owner: str, lease_until: float) -> None:
        sql = "UPDATE quart_deferred_jobs SET lease_until = ? WHERE owner = ? AND state = 'waiting'"
        self._submit(lambda c: c.execute(sql, (lease_until, owner)), wait=False)

    def release(self, owner: str) -> asyncio.Future[None]:
        sql = (
            "UPDATE quart_deferred_jobs SET owner = NULL, lease_until = NULL "
            "WHERE owner = ? AND state = 'waiting'"
        )
        future = self._submit(lambda c: c.execute(sql, (owner,)) and None, wait=True)
        assert future is not None
        return future

    # Direct reads and changes, on a connection of their own (the CLI's)

    def _direct(self, sql: str, values: tuple[object, ...] = ()) -> tuple[list[Any], int]:
        """Run *sql* in a transaction of its own; return its rows and how many it changed."""
        connection = self.connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            cursor = connection.execute(sql, values)
            rows = cursor.fetchall()
            connection.execute("COMMIT")
            return rows, cursor.rowcount
        finally:
            connection.close()

    def jobs(self, state: str, limit: int) -> list[Record]:
        rows, _ = self._direct(
            f"SELECT {_COLUMNS} FROM quart_deferred_jobs WHERE state = ? ORDER BY created LIMIT ?",
            (state, limit),
        )
        return [Record(*row) for row in rows]

    def revive(self, job_id: str | None) -> int:
        which = "" if job_id is None else "AND id = ?"
        now = time.time()
        values: tuple[object, ...] = (now, now) if job_id is None else (now, now, job_id)
        _, changed = self._direct(
            "UPDATE quart_deferred_jobs SET state = 'waiting', attempt = 0, not_before = ?, "
            f"updated = ?, owner = NULL, lease_until = NULL WHERE state = 'dead' {which}",
            values,
        )
        return changed

    def purge(self, states: Collection[str], before: float) -> int:
        states = list(states)
        marks = ", ".join("?" * len(states))
        _, changed = self._direct(
            f"DELETE FROM quart_deferred_jobs WHERE state IN ({marks}) AND updated < ?",
            (*states, before),
        )
        return changed

    def counts(self) -> dict[str, int]:
        rows, _ = self._direct("SELECT state, COUNT(*) FROM quart_deferred_jobs GROUP BY state")
        return {"waiting": 0, "done": 0, "dead": 0, **dict(rows)}


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in items:
        if future.done():  # Given up on (a cancelled send): the write stands.
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
