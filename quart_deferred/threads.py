"""Plain functions on threads: run one, and know afterwards what became of it.

A thread cannot be cancelled. When the runner stops waiting for a plain
function (its timeout, or shutdown), it must say what is true: the function
never started (and now never will), is still running on its thread, or had
just finished. :class:`ThreadCall` records that under a lock.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, TYPE_CHECKING

from .exceptions import InvalidCallbackError
from .jobs import describe, Job, log_fields

if TYPE_CHECKING:
    from quart.wrappers import BaseRequestWebsocket

logger = logging.getLogger("quart_deferred")


class ThreadCall:
    """Run a sync job on a thread and know, later, whether it ever started or ended.

    ``run_in_executor`` gives back an awaitable that can be abandoned but not the
    thread behind it. This wrapper records the truth under a lock, so the
    runner never reports as cancelled a function that is in fact running.
    """

    NEVER_STARTED, RUNNING, DONE = range(3)
    __slots__ = ("abandoned", "error", "job", "lock", "source", "state")

    def __init__(self, job: Job, source: BaseRequestWebsocket | None) -> None:
        self.job = job
        self.source = source
        self.lock = threading.Lock()
        self.state = self.NEVER_STARTED
        self.abandoned = False
        self.error: BaseException | None = None

    def __call__(self) -> None:
        with self.lock:
            if self.abandoned:  # Given up on before a thread picked it up: don't run.
                return
            self.state = self.RUNNING
        job = self.job
        try:
            result: Any = job.func(*job.args, **job.kwargs)
            if hasattr(result, "__await__"):
                if hasattr(result, "close"):
                    result.close()
                msg = (
                    f"The plain function {job.name} returned an awaitable, which would "
                    "never be awaited. Make it an async def function, or pass the async "
                    "function itself."
                )
                raise InvalidCallbackError(msg)
        except BaseException as error:
            self.error = error
            raise
        finally:
            with self.lock:
                self.state = self.DONE
                late = self.abandoned
            if late:
                fields = log_fields(job.name, self.source)
                logger.info(
                    "%s for %s finished on its thread after it had been given up on.",
                    job.name,
                    describe(self.source),
                    extra=fields,
                )

    def abandon(self) -> int:
        """Stop waiting for the call and return its state: it never will start, is
        still running on its thread, or is already done."""
        with self.lock:
            self.abandoned = True
            return self.state
