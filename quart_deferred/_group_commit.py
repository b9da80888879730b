"""Group commit for the SQLite journal: many writes, one transaction, one commit.

Requests do not pay a commit each: writes are queued, everything queued is
run in one transaction and committed once, and then every waiter of that
group is woken with one call per event loop. Two ways, by
``QUART_DEFERRED_JOURNAL_SYNC``:

- ``"normal"`` (the default): the group is written on the event loop, once
  per pass of the loop, with ``synchronous=NORMAL``. A commit is then a write
  into the WAL file, no ``fsync``: tens of microseconds, which the loop pays
  rather than a hand-over to a thread (which waits for the GIL, up to its
  5 ms switch interval under load). Checkpoints run on a thread of their own,
  without ``fsync`` either, so no commit waits behind one. What is committed
  survives the process (SIGKILL, a crash); a power loss or an operating
  system crash may lose the last commits.
- ``"full"``: the group is written on a thread of its own, with
  ``synchronous=FULL``: each commit is ``fsync``-ed, and survives a power
  loss too. While one group commits, the next gathers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
import logging
import sqlite3
import threading
from typing import Any

from ._journal import JournalError

logger = logging.getLogger("quart_deferred")

CHECKPOINT_EVERY = 1.0  # Seconds between checkpoints of the WAL ("normal").

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
        connection = connect()  # Here, so that an error is raised at the start.
        self._connection: sqlite3.Connection | None = None  # "normal": the loop's.
        if sync == "normal":
            # Checkpoints (the WAL copied back into the file) on a thread of their own,
            # not in the commit on the loop that happens to cross the threshold.
            connection.execute("PRAGMA wal_autocheckpoint=0")
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
        connection = self._connection
        if connection is not None:
            self._flush()
            connection.close()
            self._connection = None
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join(timeout=10.0)

    def _flush(self) -> None:
        self._flushing = None
        if self._queue and self._connection is not None:
            group = list(self._queue)
            self._queue.clear()
            self._commit(self._connection, group)

    def _checkpoint(self) -> None:
        connection = self._connect()
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


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in items:
        if future.done():  # Given up on (a cancelled send): the write stands.
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
