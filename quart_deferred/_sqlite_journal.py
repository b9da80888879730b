"""The SQLite journal: one file in WAL mode, its schema, and the journal's operations in SQL.

The writes go through a ``GroupWriter`` (_group_commit.py): queued, and
committed in groups, on the event loop or on a thread. The CLI's reads and
changes, and ``stats()``'s counts, use connections of their own
(_sqlite_admin.py). Several processes may share the
file: SQLite's own locking orders their transactions (``BEGIN IMMEDIATE``,
a busy timeout of 10 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
import logging
import os
import sqlite3
import threading
import time
from typing import Any

from ._group_commit import GroupWriter, Operation
from ._journal import JournalError, Record
from ._sqlite_admin import COLUMNS, count_states, delete_older, list_jobs, purge, revive

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
CREATE TABLE IF NOT EXISTS quart_deferred_meta (key TEXT PRIMARY KEY, value REAL);
"""


class SQLiteJournal:
    """A journal in one SQLite file, shared by every process that names it."""

    def __init__(self, url: str, sync: str = "normal") -> None:
        self.url = url
        self.sync = sync
        self._writer: GroupWriter | None = None
        # Rows to insert, and the future their one INSERT settles; ids of jobs that
        # succeeded: each gathered until its write runs, as one statement.
        self._adding: list[tuple[object, ...]] = []
        self._added: asyncio.Future[None] | None = None
        self._done: list[str] = []
        self._lock = threading.Lock()  # The writer thread ("full") swaps these lists.
        self.path = url.removeprefix("sqlite:///")  # sqlite:////abs/path: an absolute path.

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
        connection: sqlite3.Connection | None = None
        try:
            connection = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={self.sync.upper()}")
            connection.executescript(_SCHEMA)
        except sqlite3.Error as error:
            if connection is not None:
                connection.close()
            msg = (
                f"The journal {self.url} cannot be opened for writing ({error}). Check that "
                f"the server's user may write {os.path.abspath(self.path)} and its folder, "
                "or point QUART_DEFERRED_JOURNAL elsewhere."
            )
            raise JournalError(msg) from error
        return connection

    def open(self) -> None:
        if self._writer is None:
            self._writer = GroupWriter(self.connect, self.url, self.sync)  # Raises here.

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _submit(self, operation: Operation, *, wait: bool) -> asyncio.Future[Any] | None:
        if self._writer is None:
            msg = f"The journal {self.url} is not open (or closed already)."
            raise JournalError(msg)
        return self._writer.submit(operation, wait=wait)

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
        with self._lock:
            added = self._added
            if added is None:  # The first since the last insert: one statement for them all.
                added = self._added = self._submit(self._insert, wait=True)
            self._adding += rows
        assert added is not None
        return added

    def _insert(self, connection: sqlite3.Connection) -> None:
        with self._lock:
            rows, self._adding, self._added = self._adding, [], None
        connection.executemany(
            "INSERT OR REPLACE INTO quart_deferred_jobs (id, name, arguments, origin, created, "
            "not_before, attempt, state, owner, lease_until, updated, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def finished(self, job_id: str) -> None:
        with self._lock:
            done = self._done
            done.append(job_id)
        if len(done) == 1:  # The first since the last write: one statement for them all.
            self._submit(self._mark_done, wait=False)

    def _mark_done(self, connection: sqlite3.Connection) -> None:
        with self._lock:
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
                f"SELECT {COLUMNS} FROM quart_deferred_jobs WHERE {free} ORDER BY created",
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

    def others(self, names: Collection[str]) -> asyncio.Future[dict[str, int]]:
        names = list(names)
        known = ", ".join("?" * len(names)) or "''"  # NOT IN (NULL) would match nothing.
        sql = (
            "SELECT name, COUNT(*) FROM quart_deferred_jobs "
            f"WHERE state = 'waiting' AND name NOT IN ({known}) GROUP BY name"
        )
        future = self._submit(lambda c: dict(c.execute(sql, names).fetchall()), wait=True)
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

    def expire(self, before: float, limit: int) -> asyncio.Future[int]:
        sql = delete_older(1)
        future = self._submit(lambda c: c.execute(sql, ("done", before, limit)).rowcount, wait=True)
        assert future is not None
        return future

    # The operator's reads and changes (the CLI, stats()): see _sqlite_admin.py

    def jobs(self, state: str, limit: int) -> list[Record]:
        return list_jobs(self.path, state, limit)

    def revive(self, job_id: str | None) -> int:
        return revive(self.connect, job_id)

    def purge(self, states: Collection[str], before: float) -> int:
        return purge(self.connect, states, before)

    def counts(self) -> dict[str, int]:
        return count_states(self.path)
