"""The supervised task runner: limits, timeouts, error reports and the drain at shutdown.

Work arrives as batches: one request's post-response jobs, or one
``start_soon`` call. A batch waits in a FIFO queue as a plain record, not a
task, until one of at most ``max_concurrency`` worker tasks takes it. The
worker runs the batch's jobs one after another, each step in the request's
own captured context (see ``in_context.py``). Idle workers park on a future,
so a steady stream of requests costs no task creation at all.

Waking a parked worker is the dearest step here (a future, a loop callback
and a task step: more than the rest of a short job), so one is woken only
when none is already on its way. A worker takes batch after batch while
they finish without waiting; when one of its batches has to wait, it first
wakes another worker for whatever is queued behind it. So no batch waits
for another batch's I/O, and a burst of requests that finish together
costs one wake-up, not one each.

Every job ends in exactly one of: succeeded, failed, timed out, cancelled.
The counters move together, without an ``await`` in between, so that at
every moment ``scheduled == waiting + running + succeeded + failed +
timed_out + cancelled``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass
import logging
import time
from typing import Any

import anyio
from quart import Quart
from quart.signals import got_background_exception

from ._compat import handle_background_exception
from .exceptions import OverloadedError
from .in_context import in_context
from .jobs import Batch, callable_name, Job, log_fields
from .metrics import Latency, LatencyRecorder, WINDOW
from .threads import ThreadCall
from .tracing import Tracing

logger = logging.getLogger("quart_deferred")


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
    wait: Latency = Latency()  # From the final send (or start_soon) to the job's start.
    duration: Latency = Latency()  # From the job's start to its end, whichever way.


_COUNTS = (
    "scheduled",
    "waiting",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "skipped",
)


class Counters:
    """The live counters behind :class:`Stats`; they outlive any one runner."""

    __slots__ = (*_COUNTS, "duration", "wait")

    def __init__(self) -> None:
        self.scheduled = self.waiting = self.running = self.succeeded = 0
        self.failed = self.timed_out = self.cancelled = self.skipped = 0
        self.wait = LatencyRecorder()
        self.duration = LatencyRecorder()

    def snapshot(self) -> Stats:
        return Stats(
            self.scheduled,
            self.waiting,
            self.running,
            self.succeeded,
            self.failed,
            self.timed_out,
            self.cancelled,
            self.skipped,
            self.wait.snapshot(),
            self.duration.snapshot(),
        )


class TaskRunner:
    """Run batches of jobs on worker tasks this runner owns, on the loop it was created on."""

    def __init__(
        self,
        app: Quart,
        counters: Counters,
        keys: set[str],
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
        self.max_pending = max_pending
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None  # Started with the first plain job.
        self._tracing = Tracing.load()  # None unless OpenTelemetry is installed.
        self._crowded = False  # Waiting work is past 80% of max_pending.
        self.closed = False
        # Exchanges whose final message is going out right now (they add one, and
        # release() when done), so that join() waits for their work too.
        self.pending = 0
        self._counters = counters
        self._keys = keys
        self._waiting: deque[Batch] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._busy = 0
        self._parked: list[asyncio.Future[None]] = []
        self._waking = 0  # Workers woken or started that have not yet looked at the queue.
        self._idle_waiters: list[asyncio.Future[None]] = []

    # Admission

    def admit(self, func: object, caller: str) -> None:
        """Refuse new work with ``OverloadedError`` while ``max_pending`` jobs are waiting."""
        limit = self.max_pending
        if limit is not None and self._counters.waiting >= limit:
            msg = (
                f"{caller}() refused {callable_name(func)}: {self._counters.waiting} jobs are "
                f"already waiting to run (QUART_DEFERRED_MAX_PENDING={limit}). Answer 503 "
                "Service Unavailable and let the client retry, or raise the limit."
            )
            raise OverloadedError(msg)

    def submit(self, batch: Batch) -> None:
        """Accept *batch* and see that a worker will take it; never drop it."""
        counters = self._counters
        count = len(batch.jobs)
        batch.handed_at = time.perf_counter()
        counters.scheduled += count
        counters.waiting += count
        if self.closed:
            self._cancel_unstarted(batch, "it arrived after the runner had shut down")
            _settle(batch)
            return
        self._waiting.append(batch)
        if self.max_pending is not None:
            self._check_crowding(batch)
        if not self._waking:  # A worker on its way takes this batch too.
            self._wake()

    def _wake(self) -> None:
        """See that a worker comes for the waiting work: wake a parked one, or start one.

        With ``max_concurrency`` workers busy, the next to finish its batch takes it.
        """
        if self._parked:
            self._parked.pop().set_result(None)
        elif len(self._workers) < self.max_concurrency:
            worker = self.loop.create_task(self._work())
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        else:
            return
        self._waking += 1

    def _hand_off(self) -> None:
        """Called as a worker's batch starts to wait: another worker takes what is queued."""
        if self._waiting and not self._waking:
            self._wake()

    def _check_crowding(self, batch: Batch | None = None) -> None:
        """Warn once each time waiting work climbs past 80% of ``max_pending``."""
        assert self.max_pending is not None
        crowded = self._counters.waiting >= 0.8 * self.max_pending
        if crowded and not self._crowded and batch is not None:
            logger.warning(
                "%d jobs are waiting to run, 80%% of QUART_DEFERRED_MAX_PENDING=%d; new work "
                "will be refused with OverloadedError once it is reached (the last: %s for %s).",
                self._counters.waiting,
                self.max_pending,
                batch.jobs[-1].name,
                batch.origin,
                extra=batch.log_fields(batch.jobs[-1]),
            )
        self._crowded = crowded

    def release(self) -> None:
        """Stop counting an exchange in ``pending``: its work, if any, has been submitted."""
        self.pending -= 1
        if self._idle_waiters:
            self._wake_idle_waiters()

    # Running

    async def _work(self) -> None:
        """Be one worker: take waiting batches in FIFO order, park when there are none."""
        waiting = self._waiting
        hand_off = self._hand_off
        self._waking -= 1  # Started by _wake(), which counted this worker as on its way.
        while True:
            if not waiting:
                parked = self.loop.create_future()
                self._parked.append(parked)
                try:
                    await parked  # _wake() pops it off the list as it wakes it.
                except asyncio.CancelledError:  # Shutdown.
                    if parked in self._parked:
                        self._parked.remove(parked)
                    elif not parked.cancelled():  # Woken, then cancelled before it ran.
                        self._waking -= 1
                    raise
                self._waking -= 1
                continue
            batch = waiting.popleft()
            self._busy += 1
            try:
                if batch.fresh_app_context:
                    await in_context(self._run_in_app_context(batch), batch.context, hand_off)
                else:
                    await in_context(self._run(batch), batch.context, hand_off)
            except Exception:
                job = batch.jobs[max(batch.next - 1, 0)]
                logger.exception(
                    "Quart-Deferred's runner failed around %s for %s",
                    job.name,
                    batch.origin,
                    extra=batch.log_fields(job),
                )
            finally:
                self._busy -= 1
                if self._crowded:
                    self._check_crowding()
                if batch.next < len(batch.jobs):
                    self._cancel_unstarted(batch, "the runner was shutting down")
                if batch.done is not None:
                    _settle(batch)
                if self._idle_waiters:
                    self._wake_idle_waiters()
            # Parked workers must not keep their last request (its g, its
            # database connection) alive until more work arrives.
            del batch

    async def _run_in_app_context(self, batch: Batch) -> None:
        # No app context was captured (start_soon outside one): give the work
        # a fresh one, as Quart's add_background_task does.
        async with self.app.app_context():
            await self._run(batch)

    async def _run(self, batch: Batch) -> None:
        """Run the batch's jobs one after another, in the batch's context."""
        jobs = batch.jobs
        counters = self._counters
        timeout = self.task_timeout
        tracing = self._tracing
        clock = time.perf_counter
        waits = counters.wait.samples  # Appended to directly: see LatencyRecorder.
        durations = counters.duration.samples
        for job in jobs:
            batch.next += 1
            counters.waiting -= 1
            counters.running += 1
            started = clock()
            wait = started - batch.handed_at
            waits.append(wait)
            span = None
            if tracing is not None and started >= tracing.quiet_until:
                span = tracing.start(job, batch, wait, started)
            outcome, failure = "cancelled", None
            thread_call = None if job.is_async else ThreadCall(job, batch.source)
            try:
                if thread_call is None:
                    awaitable = job.func(*job.args, **job.kwargs)
                else:
                    awaitable = self._on_thread(thread_call)
                if timeout is None:
                    await awaitable
                else:
                    with anyio.move_on_after(timeout) as scope:
                        await awaitable
                    if scope.cancelled_caught:
                        outcome = "timeout"
                        self._timed_out(job, batch, thread_call)
                        continue
                outcome = "ok"
            except Exception as error:
                outcome, failure = "error", error
                counters.running -= 1
                counters.failed += 1
                await self._report(error, job, batch)
                continue
            except asyncio.CancelledError:  # Shutdown; the rest of the batch is logged too.
                if thread_call is not None:
                    self._finish_thread_call(thread_call, job, batch, shutdown=True)
                else:
                    counters.running -= 1
                    counters.cancelled += 1
                    _log_cancelled(job, batch, "it was still running")
                raise
            finally:
                durations.append(clock() - started)
                if job.key is not None:
                    self._keys.discard(job.key)
                if span is not None:
                    span.end(outcome, failure)
            counters.running -= 1
            counters.succeeded += 1
        if len(waits) >= WINDOW:  # Checked here, not in a call per sample: see LatencyRecorder.
            counters.wait.fold()
            counters.duration.fold()

    def _on_thread(self, thread_call: ThreadCall) -> asyncio.Future[None]:
        """Run *thread_call* on the runner's own threads, in a copy of the current context.

        Not Quart's ``run_sync`` (the loop's default executor): blocking
        post-response work must not take the threads that plain ``def`` views
        need to answer requests.
        """
        executor = self._executor
        if executor is None:
            executor = self._executor = ThreadPoolExecutor(
                self.threads, thread_name_prefix="quart-deferred"
            )
        return self.loop.run_in_executor(executor, copy_context().run, thread_call)

    def _timed_out(self, job: Job, batch: Batch, thread_call: ThreadCall | None) -> None:
        if batch.errors is not None:
            batch.errors.append(
                TimeoutError(f"{job.name} for {batch.origin} timed out after {self.task_timeout}s")
            )
        if thread_call is not None:
            self._finish_thread_call(thread_call, job, batch, shutdown=False)
            return
        self._finish("timed_out")
        _log(
            logging.ERROR,
            "%s for %s timed out after %ss (QUART_DEFERRED_TASK_TIMEOUT) and was cancelled.",
            job,
            batch,
            self.task_timeout,
        )

    def _finish(self, outcome: str) -> None:
        counters = self._counters
        counters.running -= 1
        setattr(counters, outcome, getattr(counters, outcome) + 1)

    def _finish_thread_call(
        self, thread_call: ThreadCall, job: Job, batch: Batch, *, shutdown: bool
    ) -> None:
        """Account for a sync job whose await was cut short by shutdown or its timeout."""
        state = thread_call.abandon()
        if state == ThreadCall.DONE:  # It finished just as the await was cut short.
            if thread_call.error is None:
                self._finish("succeeded")
            else:
                self._finish("failed")
                if batch.errors is not None:
                    batch.errors.append(thread_call.error)
                _log(logging.ERROR, "%s for %s failed.", job, batch, exc=thread_call.error)
        elif state == ThreadCall.NEVER_STARTED:
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
        """Log *error* with its traceback and send Quart's ``got_background_exception``.

        An app that overrides ``handle_background_exception`` gets its own
        method called instead, as for Quart's background tasks.
        """
        if hasattr(error, "add_note"):  # Python 3.11+: name the job in the traceback.
            error.add_note(f"in deferred work {job.name} for {batch.origin}")
        if batch.errors is not None:
            batch.errors.append(error)
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

    def _cancel_unstarted(self, batch: Batch, reason: str) -> None:
        counters = self._counters
        for job in batch.jobs[batch.next :]:
            counters.waiting -= 1
            counters.cancelled += 1
            if job.key is not None:
                self._keys.discard(job.key)
            _log_cancelled(job, batch, f"it had not started; {reason}")
        batch.next = len(batch.jobs)

    # Waiting

    @property
    def idle(self) -> bool:
        return not self._waiting and self._busy == 0 and self.pending == 0

    async def wait_idle(self) -> None:
        """Return once nothing is waiting, running or about to be submitted."""
        while not self.idle:
            waiter = self.loop.create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def _wake_idle_waiters(self) -> None:
        if self.idle:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def shutdown(self, grace: float) -> None:
        """Drain for up to *grace* seconds, then cancel what is left, logging each job."""
        started = time.monotonic()
        with anyio.move_on_after(grace):
            await self.wait_idle()
        self.closed = True
        for batch in self._waiting:
            self._cancel_unstarted(batch, f"the {grace}s shutdown timeout ran out")
            _settle(batch)
        self._waiting.clear()
        workers = list(self._workers)
        for worker in workers:
            worker.cancel()
        if workers:
            # Cancelled jobs log themselves; give them a moment to unwind.
            await asyncio.wait(workers, timeout=1.0)
        if self._executor is not None:
            # Plain functions still on their threads run on (they cannot be
            # stopped); the ones that never started are dropped, and were logged.
            self._executor.shutdown(wait=False, cancel_futures=True)
        logger.debug(
            "Quart-Deferred drained in %.3fs",
            time.monotonic() - started,
            extra=log_fields(None, None),
        )


def _settle(batch: Batch) -> None:
    if batch.done is not None and not batch.done.done():
        batch.done.set_result(batch.errors or [])


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


def _log_cancelled(job: Job, batch: Batch, why: str) -> None:
    _log(logging.WARNING, "Cancelled %s for %s at shutdown: %s.", job, batch, why)
