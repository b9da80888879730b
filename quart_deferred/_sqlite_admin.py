"""The operator's side of the SQLite journal: what ``quart deferred`` and ``stats()`` do to it.

None of it goes through the group writer of a running app (_sqlite_journal.py).
Reads (``list``, ``stats()``'s counts) open the file read-only, without the
write lock: in WAL mode a reader never waits for a writer, so ``stats()``
can read on the event loop. Changes (``retry``, ``purge``) open a
connection of their own and take the lock like any other process sharing
the file, a transaction at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
import os
from pathlib import Path
import sqlite3
import time
from typing import Any

from ._journal import Record

COLUMNS = "id, name, arguments, origin, created, not_before, attempt, state, owner, error"
PURGE_BATCH = 1000  # Records `quart deferred purge` deletes in one transaction (a few ms).
PURGE_PAUSE = 0.01  # Seconds between two of them.

Connect = Callable[[], sqlite3.Connection]  # A connection of its own, the schema in place.


def delete_older(states: int) -> str:
    """The DELETE of at most ``?`` records in one of *states* ``?`` marks, changed before ``?``.

    Deleting a few at a time keeps each transaction, and the write lock, short: for
    ``purge`` here, and for the running app's expiry (``SQLiteJournal.expire``).
    """
    marks = ", ".join("?" * states)
    return (
        "DELETE FROM quart_deferred_jobs WHERE id IN (SELECT id FROM quart_deferred_jobs "
        f"WHERE state IN ({marks}) AND updated < ? LIMIT ?)"
    )


def list_jobs(path: str, state: str, limit: int) -> list[Record]:
    """The first *limit* records in *state*, oldest first."""
    rows = _read(
        path,
        f"SELECT {COLUMNS} FROM quart_deferred_jobs WHERE state = ? ORDER BY created LIMIT ?",
        (state, limit),
    )
    return [Record(*row) for row in rows]


def count_states(path: str) -> dict[str, int]:
    """How many records are waiting, done and dead."""
    rows = _read(path, "SELECT state, COUNT(*) FROM quart_deferred_jobs GROUP BY state")
    return {"waiting": 0, "done": 0, "dead": 0, **dict(rows)}


def revive(connect: Connect, job_id: str | None) -> int:
    """Make dead records (or the one with *job_id*) wait again, from attempt 0, held by none."""
    which = "" if job_id is None else "AND id = ?"
    now = time.time()
    values: tuple[object, ...] = (now, now) if job_id is None else (now, now, job_id)
    connection = connect()
    try:
        connection.execute("BEGIN IMMEDIATE")
        changed = connection.execute(
            "UPDATE quart_deferred_jobs SET state = 'waiting', attempt = 0, not_before = ?, "
            f"updated = ?, owner = NULL, lease_until = NULL WHERE state = 'dead' {which}",
            values,
        ).rowcount
        connection.execute("COMMIT")
        return changed
    finally:
        connection.close()


def purge(connect: Connect, states: Collection[str], before: float) -> int:
    """Delete the records in *states* last changed before *before*; return how many."""
    # In transactions of PURGE_BATCH records with a pause between them, so that the
    # running servers' commits (which wait for the lock meanwhile) get their turn.
    states = list(states)
    sql = delete_older(len(states))
    connection = connect()
    removed = 0
    try:
        while True:
            connection.execute("BEGIN IMMEDIATE")
            changed = connection.execute(sql, (*states, before, PURGE_BATCH)).rowcount
            connection.execute("COMMIT")
            removed += changed
            if changed < PURGE_BATCH:
                return removed
            time.sleep(PURGE_PAUSE)
    finally:
        connection.close()


def _read(path: str, sql: str, values: tuple[object, ...] = ()) -> list[Any]:
    """Return the rows of the query *sql*, read on a read-only connection."""
    if not os.path.exists(path):
        return []
    uri = f"{Path(os.path.abspath(path)).as_uri()}?mode=ro"  # Quoted: '?', '#', '%'.
    connection = sqlite3.connect(uri, uri=True, timeout=1.0)
    try:
        return connection.execute(sql, values).fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):  # Opened by nothing yet.
            return []
        raise
    finally:
        connection.close()
