"""The supervised task runner: a task per batch, limits, and one owner of what counts jobs.

Work arrives as batches: one request's post-response jobs, or one
``start_soon`` call. A batch waits in a FIFO queue as a plain record until
fewer than ``max_concurrency`` batches are running; then it gets a task of
its own, started in the batch's captured context, never in the context of
whatever code happened to start it. So ``asyncio.current_task()`` inside a
job belongs to that request's jobs alone, as with Quart's
``add_background_task``, and libraries that key state on the current task
(SQLAlchemy's ``async_scoped_session``) keep requests apart.

How the jobs of one batch run on its task, each accounted for once, is
_batch_run.py; the drain at shutdown is _drain.py. The runner owns
everything that counts or limits jobs: the app's counters and keys (written
by its ``Admission``, its ``Ledger`` and the batch runs it starts), the
admission of new work, and ``pending``, the exchanges being handed over.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
import logging
import sys
import time
from typing import Any

from quart import Quart

from ._admission import Admission
from ._batch_run import run_jobs
from ._outcomes import Ledger
from ._stepping import time_collections
from .jobs import Batch, Job, NO_KWARGS
from .metrics import Counters, Keys
from .threads import ThreadCall, ThreadPool
from .tracing import Tracing

logger = logging.getLogger("quart_deferred")

_CONTEXT_ARGUMENT = sys.version_info >= (3, 11)  # create_task(context=...)


class TaskRunner:
    """Run batches of jobs on tasks this runner owns, on the loop it was created on."""

    def __init__(
        self,
        app: Quart,
        counters: Counters,
        keys: Keys,
        *,
        max_concurrency: int,
        task_timeout: float | None,
        max_pending: int | None = None,
        threads: int = 8,
    ) -> None:
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.max_concurrency = max_concurrency
        self.task_timeout = task_timeout
        self.thread_count = threads
        self.pool: ThreadPool | None = None  # Started with the first plain job.
        time_collections()
        self.tracing = Tracing.load()  # None unless OpenTelemetry is installed.
        self.closed = False
        # Exchanges whose final message is going out right now (they add one, and
        # release() when done), so that join() waits for their work too.
        self.pending = 0
        self.counters = counters
        self.keys = keys
        self._waiting: deque[Batch] = deque()
        self.tasks: dict[Batch, asyncio.Task[None]] = {}  # Each running batch's task.
        self._idle_waiters: list[asyncio.Future[None]] = []
        self.ledger = Ledger(app, counters, keys, task_timeout)
        # What the runner lets in. It, its admission, its ledger and its batch runs
        # (_batch_run.py) are the only writers of the counters and keys.
        self.admission = Admission(counters, keys, max_pending)

    def submit(self, batch: Batch) -> None:
        """Accept *batch* and see that it runs, now or when a slot frees; never drop it."""
        counters = self.counters
        count = len(batch.jobs)
        batch.handed_at = time.perf_counter()
        counters.scheduled += count
        counters.waiting += count
        if self.closed:
            self.ledger.cancel_unstarted(batch, "it arrived after the runner had shut down")
            self.ledger.flush_unnamed()
            _settle(batch)
        elif len(self.tasks) < self.max_concurrency:
            self._start(batch)
        else:
            self._waiting.append(batch)

    def _start(self, batch: Batch) -> None:
        coro = self._in_app_context(batch) if batch.fresh_app_context else self._run(batch)
        if _CONTEXT_ARGUMENT:
            create_task: Any = self.loop.create_task  # Typed for Python 3.10 here.
            task = create_task(coro, context=batch.context)
        else:  # Python 3.10: the task copies the context current at its creation.
            task = batch.context.run(self.loop.create_task, coro)
        self.tasks[batch] = task

    def _end(self, batch: Batch) -> None:
        """A batch's task is done with it: account for what did not run, start the next."""
        self.tasks.pop(batch, None)
        if batch.next < len(batch.jobs):
            self.ledger.cancel_unstarted(batch, "the runner was shutting down")
        if batch.waiter is not None:
            batch.waiter.settle()
        waiting = self._waiting
        while waiting and len(self.tasks) < self.max_concurrency and not self.closed:
            self._start(waiting.popleft())
        if self._idle_waiters:
            self._wake_idle_waiters()

    def hold(self) -> None:
        """Count an exchange in ``pending``: ``join()`` waits for its work from now on."""
        self.pending += 1

    def release(self) -> None:
        """Stop counting an exchange in ``pending``: its work, if any, has been submitted."""
        self.pending -= 1
        if self._idle_waiters:
            self._wake_idle_waiters()

    async def call_on_thread(self, func: Callable[..., Any], *args: Any) -> None:
        """Await ``func(*args)`` on the runner's threads; a cancelled wait never starts it late."""
        call = ThreadCall(Job(func, args, NO_KWARGS, False), None, self.keys)
        try:
            await self.thread_pool().run(self.loop, call)
        finally:
            call.abandon()

    def thread_pool(self) -> ThreadPool:
        """The runner's threads for plain ``def`` jobs, started with the first."""
        if self.pool is None:
            self.pool = ThreadPool(self.thread_count, "quart-deferred")
        return self.pool

    def owns_current_task(self) -> bool:
        """Whether the code calling this is deferred work of this runner."""
        return asyncio.current_task() in self.tasks.values()

    # Running

    async def _in_app_context(self, batch: Batch) -> None:
        # No app context was captured (start_soon outside one): give the work
        # a fresh one, as Quart's add_background_task does.
        async with self.app.app_context():
            await self._run(batch)

    async def _run(self, batch: Batch) -> None:
        """Run the batch's jobs one after another, in the batch's context, on its own task."""
        batch.started = True
        try:
            await run_jobs(self, batch)
        except asyncio.CancelledError:
            if not self.closed:  # Nobody but the loop's own teardown cancels our tasks.
                self.lose_waiting("the event loop stopped")
            raise
        except BaseException as error:  # Never expected: the jobs' own errors are caught.
            job = batch.jobs[max(batch.next - 1, 0)]
            logger.error(
                "Quart-Deferred's runner failed around %s for %s.",
                job.name,
                batch.origin,
                exc_info=error,
                extra=batch.log_fields(job),
            )
            if batch.watch is not None:  # The job it failed around counts as failed.
                self.ledger.finish("failed")
        finally:
            batch.watch = None
            self._end(batch)

    def lose_waiting(self, why: str) -> None:
        """Close the runner and account for every batch still waiting, each job by name.

        That includes batches whose task has not taken its first step: cancelled
        then, a task never runs its coroutine's code at all.
        """
        self.closed = True
        for batch in self._waiting:
            self.ledger.cancel_unstarted(batch, why)
            _settle(batch)
        self._waiting.clear()
        for batch, task in list(self.tasks.items()):
            if not batch.started:
                task.cancel()
                del self.tasks[batch]
                self.ledger.cancel_unstarted(batch, why)
                _settle(batch)

    # Waiting

    @property
    def idle(self) -> bool:
        return not self._waiting and not self.tasks and self.pending == 0

    async def wait_idle(self) -> None:
        """Return once nothing is waiting, running or about to be submitted."""
        while not self.idle:
            waiter = self.loop.create_future()
            self._idle_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter.cancelled() and waiter in self._idle_waiters:
                    self._idle_waiters.remove(waiter)  # Given up on: keep nothing of it.

    def _wake_idle_waiters(self) -> None:
        if self.idle:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def _settle(batch: Batch) -> None:
    """Tell whoever waits for *batch* (``deferred.wait_for()``) that it has ended."""
    if batch.waiter is not None:
        batch.waiter.settle()
