"""The supervised task runner: limits, timeouts, error reports and the drain at shutdown.

Work arrives as batches: one request's post-response jobs, or one
``start_soon`` call. A batch waits in a FIFO queue as a plain record until
fewer than ``max_concurrency`` batches are running; then it gets a task of
its own, started in the batch's captured context, never in the context of
whatever code happened to start it. So ``asyncio.current_task()`` inside a
job belongs to that request's jobs alone, as with Quart's
``add_background_task``, and libraries that key state on the current task
(SQLAlchemy's ``async_scoped_session``) keep requests apart.

The runner never trusts a job. Whatever a job raises (``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit``, its own ``CancelledError``) ends
that job as failed and is reported; the rest of the batch runs. A batch
task yields to the event loop between jobs at least once a millisecond, so
no amount of jobs that never await can freeze the loop. A job that ignores
its cancellation is let go of (see ``_stepping.py``), and plain jobs run on
daemon threads (see ``threads.py``), so the process can always exit on time.

Every job ends in exactly one of: succeeded, failed, timed out, cancelled.
The counters move together, without an ``await`` in between, so that at
every moment ``scheduled == waiting + running + succeeded + failed +
timed_out + cancelled``.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable
import logging
import sys
import time
from typing import Any

import anyio
from quart import Quart
from quart.signals import got_background_exception

from ._compat import handle_background_exception
from ._stepping import (
    Carried,
    drive,
    gc_seconds,
    IgnoredCancellation,
    SLOW_STEP,
    time_collections,
    Watch,
)
from .jobs import Batch, Job, log_fields, NO_KWARGS
from .metrics import Counters, WINDOW
from .threads import ThreadCall, ThreadPool
from .tracing import Tracing

logger = logging.getLogger("quart_deferred")

SLICE = 0.001  # Seconds a batch task may keep the loop before it yields between jobs.
CANCEL_GRACE = 1.0  # Seconds a job cancelled at its timeout has to end before it is let go of.
UNWIND = 0.4  # Seconds cancelled jobs and running threads get at shutdown before the exit.
NAMED_CANCELLATIONS = 1000  # Jobs named one by one when cancelled; the rest are counted.
_CONTEXT_ARGUMENT = sys.version_info >= (3, 11)  # create_task(context=...)


class TaskRunner:
    """Run batches of jobs on tasks this runner owns, on the loop it was created on."""

    def __init__(
        self,
        app: Quart,
        counters: Counters,
        keys: set[str],
        *,
        max_concurrency: int,
        task_timeout: float | None,
        threads: int = 8,
    ) -> None:
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.max_concurrency = max_concurrency
        self.task_timeout = task_timeout
        self.threads = threads
        self._pool: ThreadPool | None = None  # Started with the first plain job.
        time_collections()
        self._tracing = Tracing.load()  # None unless OpenTelemetry is installed.
        self.closed = False
        # Exchanges whose final message is going out right now (they add one, and
        # release() when done), so that join() waits for their work too.
        self.pending = 0
        self._counters = counters
        self._keys = keys
        self._waiting: deque[Batch] = deque()
        self._tasks: dict[Batch, asyncio.Task[None]] = {}  # Each running batch's task.
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._slow_names: set[str] = set()  # Jobs already reported for blocking the loop.
        self._named = 0  # Cancelled jobs logged by name so far.
        self._unnamed: Counter[str] = Counter()  # The rest, by job name.

    def submit(self, batch: Batch) -> None:
        """Accept *batch* and see that it runs, now or when a slot frees; never drop it."""
        counters = self._counters
        count = len(batch.jobs)
        batch.handed_at = time.perf_counter()
        counters.scheduled += count
        counters.waiting += count
        if self.closed:
            self._cancel_unstarted(batch, "it arrived after the runner had shut down")
            self._flush_unnamed()
            _settle(batch)
        elif len(self._tasks) < self.max_concurrency:
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
        self._tasks[batch] = task

    def _end(self, batch: Batch) -> None:
        """A batch's task is done with it: account for what did not run, start the next."""
        self._tasks.pop(batch, None)
        if batch.next < len(batch.jobs):
            self._cancel_unstarted(batch, "the runner was shutting down")
        if batch.done is not None:
            _settle(batch)
        waiting = self._waiting
        while waiting and len(self._tasks) < self.max_concurrency and not self.closed:
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
        call = ThreadCall(Job(func, args, NO_KWARGS, False), None, self._keys)
        try:
            await self._threads().run(self.loop, call)
        finally:
            call.abandon()

    def _threads(self) -> ThreadPool:
        if self._pool is None:
            self._pool = ThreadPool(self.threads, "quart-deferred")
        return self._pool

    def owns_current_task(self) -> bool:
        """Whether the code calling this is deferred work of this runner."""
        return asyncio.current_task() in self._tasks.values()

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
            await self._jobs(batch)
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
                self._finish("failed")
        finally:
            batch.watch = None
            self._end(batch)

    async def _jobs(self, batch: Batch) -> None:
        jobs = batch.jobs
        counters = self._counters
        timeout = self.task_timeout
        tracing = self._tracing
        clock = time.perf_counter
        waits = counters.wait.samples  # Appended to directly: see LatencyRecorder.
        durations = counters.duration.samples
        collecting = gc_seconds  # Seconds in garbage collections: not the job's doing.
        slice_began = batch.handed_at
        while batch.next < len(jobs):
            job = jobs[batch.next]
            batch.next += 1
            counters.waiting -= 1
            counters.running += 1
            started = clock()
            collected = collecting[0]
            wait = started - batch.handed_at
            waits.append(wait)
            span = None
            outcome, failure = "cancelled", None
            # What the timeout and shutdown need to know of a job that waits; a job that
            # ends in its first step (the common case) never needs one.
            watch = thread_call = None
            if timeout is not None:
                watch = batch.watch = Watch()
                watch.timer = self.loop.call_later(timeout, self._expire, batch, watch)
            try:
                if tracing is not None and started >= tracing.quiet_until:
                    span = tracing.start(job, batch, wait, started)
                if job.is_async:
                    coro = job.func(*job.args, **job.kwargs)
                    try:  # The first step, here: no generator for a job that never waits.
                        first = coro.send(None)
                    except StopIteration:
                        if watch is not None:
                            watch.slowest = clock() - started - (collecting[0] - collected)
                    except (asyncio.CancelledError, GeneratorExit) as own:
                        raise Carried.of(own) from own  # Nothing was thrown in yet.
                    else:
                        if watch is None:
                            watch = batch.watch = Watch()
                        watch.slowest = clock() - started - (collecting[0] - collected)
                        await drive(coro, watch, first)
                else:
                    if watch is None:
                        watch = batch.watch = Watch()
                    thread_call = ThreadCall(job, batch.source, self._keys)
                    await self._threads().run(self.loop, thread_call)
                if watch is not None and watch.expired:
                    outcome = "timeout"
                    self._timed_out(job, batch, None, clock() - started, cancelled=True)
                elif job.is_async and timeout is not None and clock() - started > timeout:
                    outcome = "timeout"
                    self._timed_out(job, batch, None, clock() - started, cancelled=False)
                else:
                    outcome = "ok"
                    counters.running -= 1
                    counters.succeeded += 1
            except asyncio.CancelledError:
                if watch is None or not watch.expired:  # Shutdown, or the loop is ending.
                    self._cancelled(job, batch, thread_call)
                    raise
                outcome = "timeout"  # The job ended by raising the cancellation.
                self._timed_out(job, batch, thread_call, clock() - started, cancelled=True)
            except IgnoredCancellation:
                self._ignored_cancellation(job, batch)
                if self.closed:
                    return
            except Carried as error:
                outcome, failure = "error", error.__cause__
                await self._failed(error.__cause__ or error, job, batch)
            except GeneratorExit:  # Thrown in: the task's coroutine is being closed.
                raise
            except BaseException as error:  # The job is never trusted: SystemExit too.
                outcome, failure = "error", error
                await self._failed(error, job, batch)
            finally:
                ended = clock()
                durations.append(ended - started)
                if watch is not None:
                    batch.watch = None
                    if watch.timer is not None:
                        watch.timer.cancel()
                    if watch.issued:
                        _uncancel(self._tasks.get(batch), watch.issued)
                    slowest = watch.slowest
                else:
                    slowest = ended - started - (collecting[0] - collected)
                if job.key is not None and thread_call is None:
                    self._keys.discard(job.key)  # A plain job's frees it on its thread.
                if span is not None:
                    span.end(outcome, failure)
                if slowest >= SLOW_STEP and job.is_async:
                    self._blocked(job, batch, slowest)
            if ended - slice_began >= SLICE and batch.next < len(jobs):
                await asyncio.sleep(0)  # Let the loop serve others between jobs.
                slice_began = clock()
        if len(waits) >= WINDOW:  # Checked here, not in a call per sample: see LatencyRecorder.
            counters.wait.fold()
            counters.duration.fold()

    def _expire(self, batch: Batch, watch: Watch) -> None:
        """The job's timeout ran out: cancel it, and let go of it if it will not end."""
        task = self._tasks.get(batch)
        if task is None:
            return
        watch.expired = True
        watch.issued += 1
        task.cancel()
        watch.timer = self.loop.call_later(CANCEL_GRACE, self._let_go, task, watch)

    def _let_go(self, task: asyncio.Task[None], watch: Watch) -> None:
        watch.abandoned = True
        watch.issued += 1
        watch.timer = None
        task.cancel()

    def _timed_out(
        self,
        job: Job,
        batch: Batch,
        thread_call: ThreadCall | None,
        took: float,
        *,
        cancelled: bool,
    ) -> None:
        if batch.errors is not None:
            batch.errors.append(
                TimeoutError(f"{job.name} for {batch.origin} timed out after {self.task_timeout}s")
            )
        if thread_call is not None:
            self._finish_thread_call(thread_call, job, batch, shutdown=False)
            return
        self._finish("timed_out")
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

    def _ignored_cancellation(self, job: Job, batch: Batch) -> None:
        if self.closed:
            self._finish("cancelled")
            why = "at shutdown"
        else:
            self._finish("timed_out")
            why = f"after its {self.task_timeout}s timeout"
            if batch.errors is not None:
                batch.errors.append(TimeoutError(f"{job.name} ignored its cancellation"))
        _log(
            logging.ERROR,
            "%s for %s ignored its cancellation %s and was let go of: it will never be "
            "resumed. Let CancelledError propagate (re-raise it after cleaning up).",
            job,
            batch,
            why,
        )

    def _cancelled(self, job: Job, batch: Batch, thread_call: ThreadCall | None) -> None:
        """Account for a real cancellation of the batch's task: shutdown, or the loop ending."""
        if thread_call is not None:
            self._finish_thread_call(thread_call, job, batch, shutdown=True)
        else:
            self._finish("cancelled")
            self._log_cancelled(job, batch, "it was still running")
        if not self.closed:  # Nobody but the loop's own teardown cancels our tasks.
            self.lose_waiting("the event loop stopped")
        self._cancel_unstarted(batch, "the runner was shutting down")
        self._flush_unnamed()

    def _blocked(self, job: Job, batch: Batch, took: float) -> None:
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
            if job.key is not None:
                self._keys.discard(job.key)
            if shutdown:
                self._finish("cancelled")
                self._log_cancelled(job, batch, "it was still waiting for a free thread")
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

    async def _failed(self, error: BaseException, job: Job, batch: Batch) -> None:
        self._finish("failed")
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
            self._log_cancelled(job, batch, f"it had not started; {reason}")
        batch.next = len(batch.jobs)

    def _log_cancelled(self, job: Job, batch: Batch, why: str) -> None:
        if self._named < NAMED_CANCELLATIONS:
            self._named += 1
            _log(logging.WARNING, "Cancelled %s for %s at shutdown: %s.", job, batch, why)
        else:  # Logging each of a million jobs would take longer than any drain.
            self._unnamed[job.name] += 1

    def _flush_unnamed(self) -> None:
        if not self._unnamed:
            return
        total = sum(self._unnamed.values())
        names = ", ".join(f"{count} x {name}" for name, count in self._unnamed.most_common())
        self._unnamed.clear()
        logger.warning(
            "Cancelled %d more jobs at shutdown, past the first %d named above: %s.",
            total,
            NAMED_CANCELLATIONS,
            names,
            extra=log_fields(None, None),
        )

    def lose_waiting(self, why: str) -> None:
        """Close the runner and account for every batch still waiting, each job by name.

        That includes batches whose task has not taken its first step: cancelled
        then, a task never runs its coroutine's code at all.
        """
        self.closed = True
        for batch in self._waiting:
            self._cancel_unstarted(batch, why)
            _settle(batch)
        self._waiting.clear()
        for batch, task in list(self._tasks.items()):
            if not batch.started:
                task.cancel()
                del self._tasks[batch]
                self._cancel_unstarted(batch, why)
                _settle(batch)

    def lose_everything(self, why: str) -> None:
        """Account for all this runner's work: its loop has ended without running it."""
        self.lose_waiting(why)
        for batch in self._tasks:
            if batch.watch is not None:  # A job was running.
                job = batch.jobs[batch.next - 1]
                self._finish("cancelled")
                self._log_cancelled(job, batch, f"it was running when {why}")
                if job.key is not None:
                    self._keys.discard(job.key)
            self._cancel_unstarted(batch, why)
        self._tasks.clear()
        self._flush_unnamed()

    # Waiting

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._tasks and self.pending == 0

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

    async def shutdown(self, grace: float) -> None:
        """Drain for up to *grace* seconds, then cancel what is left, logging each job."""
        started = time.monotonic()
        with anyio.move_on_after(grace):
            await self.wait_idle()
        self.lose_waiting(f"the {grace}s shutdown timeout ran out")
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        deadline = time.monotonic() + UNWIND
        if tasks:  # Cancelled jobs log themselves; give them a moment to unwind.
            _, alive = await asyncio.wait(tasks, timeout=UNWIND)
            for batch, task in list(self._tasks.items()):  # Jobs that ignore their
                if task in alive and batch.watch is not None:  # cancellation: let go.
                    batch.watch.abandoned = True
                    task.cancel()
            if alive:
                await asyncio.wait(alive, timeout=0.1)
        if self._pool is not None:
            # Plain functions still on their threads cannot be stopped: they were
            # logged as still running, and get the rest of the moment to finish.
            # After that they do not hold the exit (daemon threads).
            left = max(0.0, deadline - time.monotonic())
            await asyncio.to_thread(self._pool.wait_running, left)
            self._pool.close()
        self._flush_unnamed()
        logger.debug(
            "Quart-Deferred drained in %.3fs",
            time.monotonic() - started,
            extra=log_fields(None, None),
        )


def _uncancel(task: asyncio.Task[None] | None, times: int) -> None:
    """Take back the runner's own cancellations of *task* (a timeout), Python 3.11+."""
    uncancel: Any = getattr(task, "uncancel", None)
    if uncancel is not None:
        for _ in range(times):
            uncancel()


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
