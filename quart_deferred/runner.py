"""The supervised task runner: limits, timeouts, error reports and the drain at shutdown.

Work arrives as batches (one request's post-response jobs, or one
``start_soon`` call). A batch waits in a FIFO queue as a plain record (not a
task) until one of ``max_concurrency`` slots is free, then runs on a task the
runner owns, in a copy of its request's context, one job after another.

Every job ends in exactly one of: succeeded, failed, timed out, cancelled.
The counters move together, without an ``await`` in between, so that at
every moment ``scheduled == waiting + running + succeeded + failed +
timed_out + cancelled``.
"""

from __future__ import annotations

import asyncio
from collections import deque
import contextlib
from dataclasses import dataclass
import logging
import threading
import time
from typing import Any, TYPE_CHECKING

import anyio

from ._compat import handle_background_exception
from .exceptions import InvalidCallbackError
from .jobs import Batch, Job

if TYPE_CHECKING:
    from quart import Quart

logger = logging.getLogger("quart_deferred")

_NO_DEADLINE = contextlib.nullcontext()


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of what one app's runner has done; see ``QuartDeferred.stats()``."""

    scheduled: int = 0
    waiting: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    skipped: int = 0


class Counters:
    """The live counters behind :class:`Stats`; they outlive any one runner."""

    __slots__ = Stats.__slots__

    def __init__(self) -> None:
        self.scheduled = self.waiting = self.running = self.succeeded = 0
        self.failed = self.timed_out = self.cancelled = self.skipped = 0

    def snapshot(self) -> Stats:
        return Stats(*(getattr(self, name) for name in self.__slots__))


class TaskRunner:
    """Run batches of jobs on tasks this runner owns, on the loop it was created on."""

    def __init__(
        self,
        app: Quart,
        counters: Counters,
        *,
        max_concurrency: int,
        task_timeout: float | None,
    ) -> None:
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.max_concurrency = max_concurrency
        self.task_timeout = task_timeout
        self.closed = False
        self.pending = 0  # Exchanges whose final message is going out right now.
        self._counters = counters
        self._waiting: deque[Batch] = deque()
        self._tasks: dict[asyncio.Task[None], Batch] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    # Admission

    def submit(self, batch: Batch) -> None:
        """Accept *batch*; start it now if a slot is free, else queue it (never drop it)."""
        counters = self._counters
        count = len(batch.jobs)
        counters.scheduled += count
        counters.waiting += count
        if self.closed:
            self._cancel_unstarted(batch, "it arrived after the runner had shut down")
            return
        self._idle.clear()
        if len(self._tasks) < self.max_concurrency and not self._waiting:
            self._start(batch)
        else:
            self._waiting.append(batch)

    def hold(self) -> None:
        """Count an exchange whose final message is being sent, so ``join`` waits for it."""
        self.pending += 1
        self._idle.clear()

    def release(self) -> None:
        self.pending -= 1
        self._check_idle()

    def _start(self, batch: Batch) -> None:
        coro = self._run(batch)
        if batch.context is None:
            task = self.loop.create_task(coro)
        else:
            # The task runs in a copy of the request's context. Context.run
            # rather than create_task(context=...), which needs Python 3.11.
            task = batch.context.run(self.loop.create_task, coro)
        self._tasks[task] = batch
        task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        batch = self._tasks.pop(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "Quart-Deferred's runner failed around the work of %s",
                batch.origin,
                exc_info=task.exception(),
            )
        if batch.next < len(batch.jobs):
            self._cancel_unstarted(batch, "the runner was shutting down")
        if self._waiting and not self.closed:
            self._start(self._waiting.popleft())
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._tasks and not self._waiting and self.pending == 0:
            self._idle.set()

    # Running

    async def _run(self, batch: Batch) -> None:
        if batch.context is None:
            # No app context was captured (start_soon outside one): give the
            # work a fresh one, as Quart's add_background_task does.
            async with self.app.app_context():
                await self._run_jobs(batch)
        else:
            await self._run_jobs(batch)

    async def _run_jobs(self, batch: Batch) -> None:
        jobs = batch.jobs
        counters = self._counters
        while batch.next < len(jobs):
            job = jobs[batch.next]
            batch.next += 1
            counters.waiting -= 1
            counters.running += 1
            await self._run_job(job, batch)

    async def _run_job(self, job: Job, batch: Batch) -> None:
        thread_call = None if job.is_async else _ThreadCall(job)
        timeout = self.task_timeout
        scope = _NO_DEADLINE if timeout is None else anyio.move_on_after(timeout)
        try:
            with scope:
                try:
                    if thread_call is None:
                        await job.func(*job.args, **job.kwargs)
                    else:
                        await self.app.ensure_async(thread_call)()
                except Exception as error:
                    self._finish("failed")
                    await self._report(error, job, batch)
                    return
        except asyncio.CancelledError:
            if thread_call is not None:
                self._finish_thread_call(thread_call, job, batch, shutdown=True)
            else:
                self._finish("cancelled")
                _log_cancelled(job, batch, "it was still running")
            raise
        if scope is not _NO_DEADLINE and scope.cancelled_caught:  # type: ignore[union-attr]
            if thread_call is not None:
                self._finish_thread_call(thread_call, job, batch, shutdown=False)
            else:
                self._finish("timed_out")
                _log(
                    logging.ERROR,
                    "%s for %s timed out after %ss (QUART_DEFERRED_TASK_TIMEOUT) and "
                    "was cancelled.",
                    job,
                    batch,
                    timeout,
                )
            return
        self._finish("succeeded")

    def _finish(self, outcome: str) -> None:
        counters = self._counters
        counters.running -= 1
        setattr(counters, outcome, getattr(counters, outcome) + 1)

    def _finish_thread_call(
        self, thread_call: _ThreadCall, job: Job, batch: Batch, *, shutdown: bool
    ) -> None:
        """Account for a sync job whose await was cut short by shutdown or its timeout."""
        state = thread_call.abandon()
        if state == _ThreadCall.DONE:  # It finished just as the await was cut short.
            if thread_call.error is None:
                self._finish("succeeded")
            else:
                self._finish("failed")
                _log(logging.ERROR, "%s for %s failed.", job, batch, exc=thread_call.error)
        elif state == _ThreadCall.NEVER_STARTED:
            if shutdown:
                self._finish("cancelled")
                _log_cancelled(job, batch, "it was still waiting for a free thread")
            else:
                self._finish("timed_out")
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
            self._finish("timed_out")
            _log(
                logging.WARNING if shutdown else logging.ERROR,
                "%s for %s is a plain function still running on its thread, which cannot "
                "be cancelled; counted as timed out (%s).",
                job,
                batch,
                "at shutdown" if shutdown else f"after {self.task_timeout}s",
            )

    async def _report(self, error: Exception, job: Job, batch: Batch) -> None:
        """Hand *error* to Quart, which logs it and sends ``got_background_exception``."""
        if hasattr(error, "add_note"):  # Python 3.11+: name the job in the traceback.
            error.add_note(f"in deferred work {job.name} for {batch.origin}")
        await handle_background_exception(self.app, error)

    def _cancel_unstarted(self, batch: Batch, reason: str) -> None:
        counters = self._counters
        for job in batch.jobs[batch.next :]:
            counters.waiting -= 1
            counters.cancelled += 1
            _log_cancelled(job, batch, f"it had not started; {reason}")
        batch.next = len(batch.jobs)

    # Waiting

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        """Return once nothing is waiting, running or about to be submitted."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def shutdown(self, grace: float) -> None:
        """Drain for up to *grace* seconds, then cancel what is left, logging each job."""
        started = time.monotonic()
        with anyio.move_on_after(grace):
            await self.wait_idle()
        self.closed = True
        for batch in self._waiting:
            self._cancel_unstarted(batch, f"the {grace}s shutdown timeout ran out")
        self._waiting.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # Cancelled jobs log themselves; give them a moment to unwind.
            await asyncio.wait(tasks, timeout=1.0)
        logger.debug("Quart-Deferred drained in %.3fs", time.monotonic() - started)


class _ThreadCall:
    """Run a sync job on a thread and know, later, whether it ever started or ended.

    ``ensure_async`` gives back an awaitable that can be abandoned but not the
    thread behind it. This wrapper records the truth under a lock, so the
    runner never reports as cancelled a function that is in fact running.
    """

    NEVER_STARTED, RUNNING, DONE = range(3)
    __slots__ = ("abandoned", "error", "job", "lock", "state")

    def __init__(self, job: Job) -> None:
        self.job = job
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
                logger.info(
                    "%s finished on its thread after it had been given up on.",
                    job.name,
                    extra={"deferred_callback": job.name},
                )

    def abandon(self) -> int:
        """Stop waiting for the call and return its state: it never will start, is
        still running on its thread, or is already done."""
        with self.lock:
            self.abandoned = True
            return self.state


def _log(
    level: int, message: str, job: Job, batch: Batch, *args: Any, exc: BaseException | None = None
) -> None:
    name = job.name
    origin = batch.origin
    logger.log(
        level,
        message,
        name,
        origin,
        *args,
        exc_info=exc,
        extra={"deferred_callback": name, "deferred_request": origin},
    )


def _log_cancelled(job: Job, batch: Batch, why: str) -> None:
    _log(logging.WARNING, "Cancelled %s for %s at shutdown: %s.", job, batch, why)
