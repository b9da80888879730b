"""This process's hold on the journal: claiming left jobs, the lease, cleaning, letting go.

At the start (lifespan startup, before the first request) and every third
of ``QUART_DEFERRED_LEASE`` after it, the process claims the waiting records
of the tasks it knows that no live process holds: their holder's lease ran
out, or, on this host, its pid has gone. It renews its lease on what it
holds at the same pace, so a live process's jobs are never run by another.
Once an hour it removes done records older than
``QUART_DEFERRED_JOURNAL_KEEP``. At shutdown it lets go of what it still
holds (``Runtime.close``), so that the next process takes it at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
import logging
import math
import os
import socket
import time
from typing import Any

from ._config import optional_seconds
from ._journal import Journal, Record
from .jobs import log_fields, tally

logger = logging.getLogger("quart_deferred")

EXPIRE_EVERY = 3600.0  # Seconds between two removals of old done records.
_EXPIRE_BATCH = 500  # Records removed in one transaction: a millisecond or two on the loop.


class Lease:
    """Claims the jobs nobody holds for *take*, and keeps this process's hold on its own."""

    def __init__(
        self,
        journal: Journal,
        owner: str,
        seconds: float,
        names: Collection[str],
        take: Callable[[Record, float], None],
        config_of: Callable[[], Mapping[str, Any]],
    ) -> None:
        self.journal = journal
        self.owner = owner
        self.seconds = seconds
        self._names = names  # The tasks this app knows (it may learn more after the start).
        self._take = take
        self._config_of = config_of
        self._renewing: asyncio.Task[None] | None = None
        self._unknown: dict[str, int] = {}  # Waiting records of tasks unknown here, as logged.

    async def start(self) -> None:
        """Claim what nobody holds, then keep claiming, renewing and cleaning in the background."""
        await self._claim()
        self._renewing = asyncio.get_running_loop().create_task(self._renew())

    async def _claim(self) -> None:
        journal = self.journal
        now = time.time()
        ended = [owner for owner in await journal.holders(now) if _ended_here(owner)]
        names = list(self._names)
        records = await journal.claim(self.owner, names, now, now + self.seconds, ended)
        for record in records:
            self._take(record, now)
        if records:
            logger.info(
                "Quart-Deferred took %d jobs from the journal %s: %s.",
                len(records),
                journal.url,
                tally(record.name for record in records),
                extra=log_fields(None, None),
            )
        # Counted, not read: there may be many (a deploy renamed a task), and this is on
        # the loop. Said again only when there are more than last said.
        unknown = await journal.others(names)
        grown = any(count > self._unknown.get(name, 0) for name, count in unknown.items())
        self._unknown = unknown
        if grown:
            logger.error(
                "The journal %s holds %d waiting jobs of tasks this app does not know: %s. "
                "They are kept, not run: import the modules that define these tasks (with "
                "@deferred.task) in the app, or deploy the process that does.",
                journal.url,
                sum(unknown.values()),
                tally(unknown),
                extra=log_fields(None, None),
            )

    async def _renew(self) -> None:
        journal = self.journal
        expired = -math.inf
        while True:
            if time.monotonic() - expired >= EXPIRE_EVERY:
                expired = time.monotonic()
                try:
                    await self._expire()
                except Exception:
                    logger.exception("Quart-Deferred could not clean the journal %s.", journal.url)
            await asyncio.sleep(self.seconds / 3)
            journal.renew(self.owner, time.time() + self.seconds)
            try:
                await self._claim()  # Take over the jobs of processes that have ended.
            except Exception:
                logger.exception("Quart-Deferred could not read the journal %s.", journal.url)

    async def _expire(self) -> None:
        """Remove done records older than ``QUART_DEFERRED_JOURNAL_KEEP``, a few at a time."""
        keep = optional_seconds(self._config_of(), "QUART_DEFERRED_JOURNAL_KEEP")
        if keep is None:
            return
        before, removed = time.time() - keep, 0
        while True:
            count = await self.journal.expire(before, _EXPIRE_BATCH)
            removed += count
            if count < _EXPIRE_BATCH:
                break
        if removed:
            logger.info(
                "Quart-Deferred removed %d finished jobs older than %.1fd from the journal %s "
                "(QUART_DEFERRED_JOURNAL_KEEP).",
                removed,
                keep / 86400,
                self.journal.url,
                extra=log_fields(None, None),
            )

    def stop(self) -> None:
        """Stop claiming, renewing and cleaning (the records are let go of by the caller)."""
        if self._renewing is not None:
            self._renewing.cancel()
            self._renewing = None


def _ended_here(owner: str) -> bool:
    """Whether *owner* was a process on this host that has ended."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # Alive, another user's.
        return False
    return False
