"""One batch's run: its jobs one after another on the batch's own task, each accounted for once.

The runner (runner.py) gives each batch a task and calls :func:`run_jobs` on
it. The run never trusts a job. Whatever a job raises (``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit``, its own ``CancelledError``) ends
that job as failed and is reported; the rest of the batch runs. The task
yields to the event loop between jobs at least once a millisecond
(``SLICE``), so no amount of jobs that never await can freeze the loop. A
job that ignores its cancellation is let go of (see ``_stepping.py``), and
plain jobs run on daemon threads (see ``threads.py``), so the process can
always exit on time.

Every job ends in exactly one of: succeeded, failed, timed out, cancelled
(or kept, for a journaled task at shutdown). The counters move together,
without an ``await`` in between, so that at every moment ``scheduled ==
waiting + running + succeeded + failed + timed_out + cancelled + kept``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, TYPE_CHECKING

from ._stepping import Carried, drive, gc_seconds, IgnoredCancellation, SLOW_STEP, Watch
from .metrics import WINDOW
from .threads import ThreadCall

if TYPE_CHECKING:
    from ._outcomes import Ledger
    from .jobs import Batch, Job
    from .metrics import Counters, Keys
    from .threads import ThreadPool
    from .tracing import Tracing

SLICE = 0.001  # Seconds a batch task may keep the loop before it yields between jobs.


class Running(Protocol):
    """What a batch's run reads and writes of its runner (runner.TaskRunner is one)."""

    loop: asyncio.AbstractEventLoop
    task_timeout: float | None
    closed: bool  # Shut down: a cancellation then is the drain's.
    counters: Counters
    keys: Keys
    ledger: Ledger
    tracing: Tracing | None
    tasks: dict[Batch, asyncio.Task[None]]  # Each running batch's task.

    def thread_pool(self) -> ThreadPool: ...

    def lose_waiting(self, why: str) -> None: ...


async def run_jobs(runner: Running, batch: Batch) -> None:
    """Run *batch*'s jobs one after another on its task, each accounted for once."""
    jobs = batch.jobs
    counters = runner.counters
    timeout = runner.task_timeout
    tracing = runner.tracing
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
            watch.timer = runner.loop.call_later(timeout, watch.expire, runner.tasks, batch)
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
                thread_call = ThreadCall(job, batch.source, runner.keys)
                await runner.thread_pool().run(runner.loop, thread_call)
            if watch is not None and watch.expired:
                outcome = "timeout"
                runner.ledger.timed_out(job, batch, None, clock() - started, cancelled=True)
            elif (
                job.is_async
                and timeout is not None
                # Its own time: garbage collections in its steps are not its doing.
                and (took := clock() - started - (collecting[0] - collected)) > timeout
            ):
                outcome = "timeout"
                runner.ledger.timed_out(job, batch, None, took, cancelled=False)
            else:
                outcome = "ok"
                counters.running -= 1
                counters.succeeded += 1
        except asyncio.CancelledError:
            if watch is None or not watch.expired:  # Shutdown, or the loop is ending.
                _cancelled(runner, job, batch, thread_call)
                raise
            outcome = "timeout"  # The job ended by raising the cancellation.
            runner.ledger.timed_out(job, batch, thread_call, clock() - started, cancelled=True)
        except IgnoredCancellation:
            runner.ledger.ignored_cancellation(job, batch, closed=runner.closed)
            if runner.closed:
                return
        except Carried as error:
            outcome, failure = "error", error.__cause__
            await runner.ledger.failed(error.__cause__ or error, job, batch)
        except GeneratorExit:  # Thrown in: the task's coroutine is being closed.
            raise
        except BaseException as error:  # The job is never trusted: SystemExit too.
            outcome, failure = "error", error
            await runner.ledger.failed(error, job, batch)
        finally:
            ended = clock()
            durations.append(ended - started)
            if watch is not None:
                batch.watch = None
                if watch.timer is not None:
                    watch.timer.cancel()
                if watch.issued:
                    watch.take_back(runner.tasks.get(batch))
                slowest = watch.slowest
            else:
                slowest = ended - started - (collecting[0] - collected)
            if job.key is not None and thread_call is None:
                runner.keys.release(job.key)  # A plain job's frees it on its thread.
            if span is not None:
                span.end(outcome, failure)
            if slowest >= SLOW_STEP and job.is_async:
                runner.ledger.blocked(job, batch, slowest)
        if ended - slice_began >= SLICE and batch.next < len(jobs):
            await asyncio.sleep(0)  # Let the loop serve others between jobs.
            slice_began = clock()
    if len(waits) >= WINDOW:  # Checked here, not in a call per sample: see LatencyRecorder.
        counters.wait.fold()
        counters.duration.fold()


def _cancelled(runner: Running, job: Job, batch: Batch, thread_call: ThreadCall | None) -> None:
    """Account for a real cancellation of the batch's task: shutdown, or the loop ending."""
    if thread_call is not None:
        runner.ledger.finish_thread_call(thread_call, job, batch, shutdown=True)
    else:
        runner.ledger.cancel_running(job, batch, "it was still running")
    if not runner.closed:  # Nobody but the loop's own teardown cancels our tasks.
        runner.lose_waiting("the event loop stopped")
    runner.ledger.cancel_unstarted(batch, "the runner was shutting down")
    runner.ledger.flush_unnamed()
