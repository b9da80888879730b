"""How each job ended: the counters it moves, the keys it frees, the line it is logged with.

The runner (runner.py) decides when a job has ended and how; its
:class:`Ledger` accounts for it, so that every outcome is counted and said
in one place: succeeded (counted inline by the runner, the common case),
failed (logged with its traceback, ``got_background_exception`` sent),
timed out (logged at ERROR), or cancelled (logged at WARNING with its name
and request: the first ``NAMED_CANCELLATIONS``, then counts per name, so
logging cannot outlast the drain).
"""

from __future__ import annotations

from collections import Counter
import logging
from typing import Any

from quart import Quart
from quart.signals import got_background_exception

from ._compat import handle_background_exception
from .jobs import Batch, Job, log_fields, tally
from .metrics import Counters, Keys
from .tasks import Retrying, TaskCall
from .threads import ThreadCall

logger = logging.getLogger("quart_deferred")

NAMED_CANCELLATIONS = 1000  # Jobs named one by one when cancelled; the rest are counted.


class Ledger:
    """The accounts of one runner's jobs: its app's counters and keys, and its log lines."""

    def __init__(
        self, app: Quart, counters: Counters, keys: Keys, task_timeout: float | None
    ) -> None:
        self.app = app
        self.counters = counters
        self.keys = keys  # De-duplication keys of work waiting or running.
        self.task_timeout = task_timeout
        self._slow_names: set[str] = set()  # Jobs already reported for blocking the loop.
        self._named = 0  # Cancelled jobs logged by name so far.
        self._unnamed: Counter[str] = Counter()  # The rest, by job name.

    def timed_out(
        self,
        job: Job,
        batch: Batch,
        thread_call: ThreadCall | None,
        took: float,
        *,
        cancelled: bool,
    ) -> None:
        if batch.waiter is not None:
            batch.waiter.add(
                TimeoutError(f"{job.name} for {batch.origin} timed out after {self.task_timeout}s")
            )
        if thread_call is not None:
            self.finish_thread_call(thread_call, job, batch, shutdown=False)
            return
        self.finish("timed_out")
        if not cancelled:
            _log(
                logging.ERROR,
                "%s for %s ran for %.3fs without awaiting, past its %ss timeout "
                "(QUART_DEFERRED_TASK_TIMEOUT), so it could not be cancelled; counted as "
                "timed out.",
                job,
                batch,
                took,
                self.task_timeout,
            )
            return
        _log(
            logging.ERROR,
            "%s for %s timed out after %ss (QUART_DEFERRED_TASK_TIMEOUT) and was cancelled.",
            job,
            batch,
            self.task_timeout,
        )

    def ignored_cancellation(self, job: Job, batch: Batch, *, closed: bool) -> None:
        if closed:
            self.finish("kept" if _journaled(job) else "cancelled")
            why = "at shutdown"
        else:
            self.finish("timed_out")
            why = f"after its {self.task_timeout}s timeout"
            if batch.waiter is not None:
                batch.waiter.add(TimeoutError(f"{job.name} ignored its cancellation"))
        _log(
            logging.ERROR,
            "%s for %s ignored its cancellation %s and was let go of: it will never be "
            "resumed. Let CancelledError propagate (re-raise it after cleaning up).",
            job,
            batch,
            why,
        )

    def blocked(self, job: Job, batch: Batch, took: float) -> None:
        if job.name in self._slow_names:
            return
        self._slow_names.add(job.name)
        _log(
            logging.WARNING,
            "%s for %s blocked the event loop for %.3fs in one step (no await in between); "
            "every request waited meanwhile. Make it a plain def function, which runs on a "
            "thread, or move the blocking call to asyncio.to_thread(). Reported once per job.",
            job,
            batch,
            took,
        )

    def finish(self, outcome: str) -> None:
        counters = self.counters
        counters.running -= 1
        setattr(counters, outcome, getattr(counters, outcome) + 1)

    def finish_thread_call(
        self, thread_call: ThreadCall, job: Job, batch: Batch, *, shutdown: bool
    ) -> None:
        """Account for a sync job whose await was cut short by shutdown or its timeout."""
        state = thread_call.abandon()
        if state == ThreadCall.DONE:  # It finished just as the await was cut short.
            if thread_call.error is None:
                self.finish("succeeded")
            else:
                self.finish("failed")
                if batch.waiter is not None:
                    batch.waiter.add(thread_call.error)
                _log(logging.ERROR, "%s for %s failed.", job, batch, exc=thread_call.error)
        elif state == ThreadCall.NEVER_STARTED:
            if job.key is not None:
                self.keys.release(job.key)
            if shutdown:
                self.finish("cancelled")
                self.log_cancelled(job, batch, "it was still waiting for a free thread")
            else:
                self.finish("timed_out")
                _log(
                    logging.ERROR,
                    "%s for %s timed out after %ss (QUART_DEFERRED_TASK_TIMEOUT) while "
                    "waiting for a free thread; it will not run.",
                    job,
                    batch,
                    self.task_timeout,
                )
        else:
            # A thread cannot be cancelled; never call this "cancelled", as it
            # may yet finish. Count it as timed out, and say what is true.
            self.finish("timed_out")
            _log(
                logging.WARNING if shutdown else logging.ERROR,
                "%s for %s is a plain function still running on its thread, which cannot "
                "be cancelled; counted as timed out (%s).",
                job,
                batch,
                "at shutdown" if shutdown else f"after {self.task_timeout}s",
            )

    async def failed(self, error: BaseException, job: Job, batch: Batch) -> None:
        self.finish("failed")
        if isinstance(error, Retrying):  # Said once already, as a WARNING: see Retrying.
            if batch.waiter is not None:
                batch.waiter.add(error.__cause__ or error)
            return
        try:
            await self._report(error, job, batch)
        except Exception:  # A receiver of the signal failed: say so, and go on.
            logger.exception(
                "Reporting the failure of %s for %s failed.",
                job.name,
                batch.origin,
                extra=batch.log_fields(job),
            )

    async def _report(self, error: BaseException, job: Job, batch: Batch) -> None:
        """Log *error* with its traceback and send Quart's ``got_background_exception``.

        An app that overrides ``handle_background_exception`` gets its own
        method called instead, as for Quart's background tasks.
        """
        if hasattr(error, "add_note"):  # Python 3.11+: name the job in the traceback.
            error.add_note(f"in deferred work {job.name} for {batch.origin}")
        if batch.waiter is not None:
            batch.waiter.add(error)
        app = self.app
        if type(app).handle_background_exception is not Quart.handle_background_exception:
            await handle_background_exception(app, error)
            return
        await got_background_exception.send_async(
            app,
            _sync_wrapper=app.ensure_async,  # type: ignore[arg-type]
            exception=error,
        )
        _log(logging.ERROR, "%s for %s failed.", job, batch, exc=error)

    def cancel_unstarted(self, batch: Batch, reason: str) -> None:
        counters = self.counters
        for job in batch.jobs[batch.next :]:
            counters.waiting -= 1
            if job.key is not None:
                self.keys.release(job.key)
            if _journaled(job):
                counters.kept += 1
            else:
                counters.cancelled += 1
            self.log_cancelled(job, batch, f"it had not started; {reason}")
        batch.next = len(batch.jobs)

    def cancel_running(self, job: Job, batch: Batch, why: str) -> None:
        """Account for a running job cancelled at shutdown (or kept, if it is journaled)."""
        self.finish("kept" if _journaled(job) else "cancelled")
        self.log_cancelled(job, batch, why)

    def log_cancelled(self, job: Job, batch: Batch, why: str) -> None:
        if _journaled(job):
            _log(
                logging.INFO,
                "Kept %s for %s in the journal at shutdown (%s): the next start runs it.",
                job,
                batch,
                why,
            )
        elif self._named < NAMED_CANCELLATIONS:
            self._named += 1
            _log(logging.WARNING, "Cancelled %s for %s at shutdown: %s.", job, batch, why)
        else:  # Logging each of a million jobs would take longer than any drain.
            self._unnamed[job.name] += 1

    def flush_unnamed(self) -> None:
        if not self._unnamed:
            return
        total = sum(self._unnamed.values())
        names = tally(self._unnamed)
        self._unnamed.clear()
        logger.warning(
            "Cancelled %d more jobs at shutdown, past the first %d named above: %s.",
            total,
            NAMED_CANCELLATIONS,
            names,
            extra=log_fields(None, None),
        )


def _journaled(job: Job) -> bool:
    func = job.func
    return type(func) is TaskCall and func.runtime.journal is not None


def _log(
    level: int, message: str, job: Job, batch: Batch, *args: Any, exc: BaseException | None = None
) -> None:
    fields = batch.log_fields(job)
    logger.log(
        level,
        message,
        job.name,
        batch.origin,
        *args,
        exc_info=exc,
        extra=fields,
    )
