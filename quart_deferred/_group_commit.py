"""Group commit for the SQLite journal: many writes, one transaction, one commit.

Requests do not pay a commit each: writes are queued, everything queued is
run in one transaction and committed once, and then every waiter of that
group is woken with one call per event loop. Two ways, by
``QUART_DEFERRED_JOURNAL_SYNC``:

- ``"normal"`` (the default): the group is written on the event loop, once
  per pass of the loop, with ``synchronous=NORMAL``. A commit is then a write
  into the WAL file, no ``fsync``, cheaper for the loop than a hand-over to
  a thread (which waits for the GIL, up to its switch interval under load;
  the figures are in the README's "Durable tasks"). The loop never waits for the file's
  lock: when another process (or the CLI) holds it, the group stays queued
  and is tried again a moment later, while the loop serves on; after
  ``BUSY_GIVE_UP`` seconds of that its waiters get a ``JournalError``.
  Every ``fsync`` is on the checkpoint thread: the checkpoint (the WAL synced,
  copied into the file, the file synced) and the first write after it, which
  starts the WAL over and syncs its header (an ``fsync``: paid on the loop,
  it stalled every request in flight). Loop commits pause meanwhile. What
  is committed survives the process (SIGKILL, a crash); a power loss or an
  operating system crash may lose the last commits, not older ones.
- ``"full"``: the group is written on a thread of its own, with
  ``synchronous=FULL``: each commit is ``fsync``-ed, and survives a power
  loss too. While one group commits, the next gathers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
import logging
import os
import sqlite3
import threading
import time
from typing import Any

from ._journal import JournalError

logger = logging.getLogger("quart_deferred")

CHECKPOINT_EVERY = 1.0  # Seconds between looks at the WAL's size ("normal").
CHECKPOINT_SIZE = 4 << 20  # Bytes of WAL that make a checkpoint due (SQLite's own default).
CHECKPOINT_AT_LEAST = 30.0  # Seconds after which one is due anyway.
BUSY_GIVE_UP = 10.0  # Seconds a group waits for the file's lock before it is failed.
_BUSY_FIRST, _BUSY_MOST = 0.001, 0.05  # Seconds between two tries at a locked file.

Operation = Callable[[sqlite3.Connection], Any]
Result = tuple[asyncio.Future[Any], Any, BaseException | None]


class GroupWriter:
    """Writes queued operations in groups, on the loop ("normal") or on a thread ("full")."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], url: str, sync: str) -> None:
        self.url = url
        self._connect = connect
        self._queue: deque[tuple[Operation, asyncio.Future[Any] | None]] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._flushing: asyncio.Handle | None = None
        self._busy_since: float | None = None  # When the loop first found the file locked.
        self._busy_wait = _BUSY_FIRST
        self._checkpointing = False  # The checkpoint thread's fsyncs are under way.
        connection = connect()  # Here, so that an error is raised at the start.
        self._connection: sqlite3.Connection | None = None  # "normal": the loop's.
        if sync == "normal":
            # Checkpoints (the WAL copied back into the file) on a thread of their own,
            # not in the commit on the loop that happens to cross the threshold; and no
            # waiting on the loop for a lock another connection holds: see _flush.
            connection.execute("PRAGMA wal_autocheckpoint=0")
            connection.execute("PRAGMA busy_timeout=0")
            self._connection = connection
            self._thread = threading.Thread(
                target=self._checkpoint, name="quart-deferred-checkpoint", daemon=True
            )
        else:
            self._thread = threading.Thread(
                target=self._write, args=(connection,), name="quart-deferred-journal", daemon=True
            )
        self._thread.start()

    def submit(self, operation: Operation, *, wait: bool) -> asyncio.Future[Any] | None:
        """Queue *operation*; with *wait*, return a future of its result, set once committed."""
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

    def close(self) -> None:
        """Write what is queued, and stop."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join(timeout=10.0)
        connection = self._connection
        if connection is not None:
            if self._flushing is not None:
                self._flushing.cancel()
            # The last writes wait for the lock as long as the busy timeout says (at
            # shutdown, nothing else is served), and the last close checkpoints, synced.
            connection.execute("PRAGMA busy_timeout=10000")
            self._checkpointing = False
            self._flush(retry=False)
            connection.close()
            self._connection = None

    def _flush(self, *, retry: bool = True) -> None:
        """Commit what is queued; if the file is locked, try again soon (with *retry*)."""
        self._flushing = None
        connection = self._connection
        if not self._queue or connection is None:
            return
        if self._checkpointing:  # The checkpoint thread is syncing: its fsyncs, not the loop's.
            self._flush_later()
            return
        group = list(self._queue)
        self._queue.clear()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            now = time.monotonic()
            since = self._busy_since = self._busy_since or now
            if retry and _is_busy(error) and now - since < BUSY_GIVE_UP:
                self._queue.extendleft(reversed(group))  # First again, in order.
                self._flush_later()
                return
            self._busy_since, self._busy_wait = None, _BUSY_FIRST
            self._commit(connection, group, begin_error=error)
            return
        self._busy_since, self._busy_wait = None, _BUSY_FIRST
        self._commit(connection, group)

    def _flush_later(self) -> None:
        """Try the queued group again soon, waiting a little longer each time (to 50 ms)."""
        loop = asyncio.get_running_loop()
        self._flushing = loop.call_later(self._busy_wait, self._flush)
        self._busy_wait = min(self._busy_wait * 2, _BUSY_MOST)

    def _checkpoint(self) -> None:
        # With the configured synchronous=NORMAL: the WAL is synced before the copy and
        # the file after it, so that a WAL started over cannot lose what was copied.
        connection = self._connect()
        # Not long behind another process's lock: the loop's commits wait while this does.
        connection.execute("PRAGMA busy_timeout=1000")
        wal = connection.execute("PRAGMA database_list").fetchone()[2] + "-wal"
        last = time.monotonic()
        try:
            while True:
                with self._ready:
                    self._ready.wait(timeout=CHECKPOINT_EVERY)
                    if self._closing:  # The loop's connection checkpoints as it closes.
                        return
                try:
                    size = os.path.getsize(wal)
                except OSError:
                    size = 0
                if size < CHECKPOINT_SIZE and time.monotonic() - last < CHECKPOINT_AT_LEAST:
                    continue
                last = time.monotonic()
                try:
                    # The bulk of the copy while the loop writes on; then the rest, and the
                    # WAL started over, while the loop's commits wait (a few milliseconds).
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    self._checkpointing = True
                    _checkpoint(connection)
                except sqlite3.Error as error:  # Busy, or the disk: the next one tries again.
                    logger.debug("Journal checkpoint of %s failed: %s", self.url, error)
                finally:
                    self._checkpointing = False
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
        begin_error: sqlite3.Error | None = None,
    ) -> None:
        """Run *group* in one transaction (begun already on the loop, or that failed to begin
        with *begin_error*: then its waiters get the error)."""
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            if begin_error is not None:
                raise begin_error
            if not connection.in_transaction:
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


def _is_busy(error: sqlite3.OperationalError) -> bool:
    return "locked" in str(error) or "busy" in str(error)


def _checkpoint(connection: sqlite3.Connection) -> None:
    """Copy the WAL into the file; if all of it was, start the WAL over here, off the loop."""
    busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if busy or frames <= 0 or copied != frames:
        return
    # The first write after a complete checkpoint starts the WAL over and syncs its header.
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(
            "INSERT OR REPLACE INTO quart_deferred_meta (key, value) VALUES ('checkpoint', ?)",
            (time.time(),),
        )
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in items:
        if future.done():  # Given up on (a cancelled send): the write stands.
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
