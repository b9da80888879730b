"""Admission: which new work a runner accepts, and the counts of work not yet handed to it.

Each :class:`~quart_deferred.runner.TaskRunner` has one :class:`Admission`,
and registrations reach it only through their runner: it refuses work past
``QUART_DEFERRED_MAX_PENDING`` with ``OverloadedError``, takes the work's
de-duplication key, and counts the jobs a request holds until its exchange
ends (``held``), then hands them over or counts them as skipped. With the
runner's ``Ledger`` (see _outcomes.py), it is the only writer of the app's
counters and keys.
"""

from __future__ import annotations

import logging

from ._compat import current_source
from .exceptions import OverloadedError
from .jobs import callable_name, describe, Job, log_fields
from .metrics import Counters, Keys

logger = logging.getLogger("quart_deferred")


class Admission:
    """What a runner lets in: the ``max_pending`` limit, keys, and jobs held by requests."""

    __slots__ = ("_crowded", "counters", "keys", "max_pending")

    def __init__(self, counters: Counters, keys: Keys, max_pending: int | None) -> None:
        self.counters = counters
        self.keys = keys
        self.max_pending = max_pending
        self._crowded = False  # Jobs not yet started are past 80% of max_pending.

    def accept(self, func: object, caller: str, key: str | None) -> bool:
        """Count new work against ``max_pending`` and take its key, or refuse it.

        Returns ``False``, taking nothing, if work with *key* is already waiting
        or running; raises ``OverloadedError`` at the limit. On every
        registration's path; callable from a plain view's thread too.
        """
        if self.max_pending is not None:
            self.admit(func, caller)
        if key is not None and not self.keys.claim(key):
            return False
        self.counters.held += 1  # Counted against MAX_PENDING until the exchange ends.
        return True

    def handed_over(self, registered: int) -> None:
        """An exchange has ended: its *registered* jobs are no longer held by it."""
        self.counters.held -= registered

    def skip(self, job: Job) -> None:
        """Count *job* as skipped (its ``when`` did not match), and free its key."""
        self.counters.skipped += 1
        if job.key is not None:
            self.keys.release(job.key)

    def admit(self, func: object, caller: str) -> None:
        """Refuse new work with ``OverloadedError`` once ``max_pending`` jobs have not started.

        Those are the jobs of requests still in flight (registered, their
        response not yet over) and the jobs waiting for a slot.
        """
        limit = self.max_pending
        if limit is None:
            return
        counters = self.counters
        queued = counters.held + counters.waiting
        if queued >= limit:
            msg = (
                f"{caller}() refused {callable_name(func)}: {queued} jobs are "
                f"already waiting to run (QUART_DEFERRED_MAX_PENDING={limit}). Answer 503 "
                "Service Unavailable and let the client retry, or raise the limit."
            )
            raise OverloadedError(msg)
        crowded = queued + 1 >= 0.8 * limit
        if crowded and not self._crowded:
            source = current_source()
            name = callable_name(func)
            logger.warning(
                "%d jobs are waiting to run, 80%% of QUART_DEFERRED_MAX_PENDING=%d; at the "
                "limit, new work is refused with OverloadedError (the last: %s for %s).",
                queued + 1,
                limit,
                name,
                describe(source),
                extra=log_fields(name, source),
            )
        self._crowded = crowded
