"""Drive one async job's coroutine step by step: time each step, and never be held by it.

The runner awaits every ``async def`` job through :func:`drive`, a generator
that stands between the job and the task running it. Whatever the job
yields (a future it waits on) goes to the task unchanged, and whatever the
task sends or throws back goes on into the job, as a plain ``await`` would.
Standing in between lets the runner do three things a plain ``await``
cannot:

- Time each step, garbage collections left out. The runner reports a job
  whose longest step kept the event loop ``SLOW_STEP`` or longer (blocking
  work without an await) once per job name, as asyncio's debug mode would,
  but always on.
- Tell the job's own ``CancelledError`` (raised, or from awaiting a
  cancelled future) from a real cancellation of the task (the runner's
  timeout, shutdown, the loop ending): only a cancellation thrown in from
  outside is one. A job's own, like a ``GeneratorExit`` it raises, is a
  failure of that job, carried to the runner in a :class:`Carried`.
- Let go of a job that ignores cancellation. Once the runner has marked
  the watch ``abandoned``, the next cancellation is not passed on to the
  job: :class:`IgnoredCancellation` is raised to the runner instead, and
  the job's coroutine is left suspended, never resumed. So a job that
  swallows every ``CancelledError`` cannot hold up the rest of its batch,
  the drain, or the process's exit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator, Mapping
from contextvars import Context
import gc
import time
import types
from typing import Any

CANCEL_GRACE = 1.0  # Seconds a job cancelled at its timeout has to end before it is let go of.
SLOW_STEP = 0.25  # Seconds; above asyncio's 0.1, as a loaded machine pauses a process too.

# Seconds spent in garbage collections so far, and when the current one began: a
# collection that lands in a job's step is not the job's doing.
gc_seconds = [0.0, 0.0]


def _on_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        gc_seconds[1] = time.perf_counter()
    else:
        gc_seconds[0] += time.perf_counter() - gc_seconds[1]


def time_collections() -> None:
    """Start counting ``gc_seconds`` (once; a runner does, so importing the package does not)."""
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)


class Carried(Exception):  # noqa: N818  # Not an error of ours: the job's, wrapped.
    """A ``BaseException`` the job raised, carried as its ``__cause__``.

    Raised as itself, it would be taken for a cancellation or a close of the
    runner's own task.
    """

    @classmethod
    def of(cls, error: BaseException) -> Carried:
        carried = cls(f"the job raised {error!r}")
        carried.__cause__ = error
        return carried


class IgnoredCancellation(BaseException):
    """The job went on after it had been cancelled, and has been let go."""


class Watch:
    """What the runner and :func:`drive` know about one running async job."""

    __slots__ = ("abandoned", "cancelled", "expired", "issued", "slowest", "timer")

    def __init__(self) -> None:
        self.cancelled = False  # A CancelledError was thrown in from outside.
        self.expired = False  # The runner's timeout cancelled it.
        self.abandoned = False  # It ignored that cancellation; the next one lets it go.
        self.issued = 0  # Cancellations the runner itself sent (its timeout), to take back.
        self.timer: asyncio.TimerHandle | None = None  # The runner's next timeout step.
        self.slowest = 0.0  # The longest step, in seconds.

    # The runner's timeout, step by step: cancel the job's task, let go of it if it
    # will not end, and take the cancellations back once the job has ended.

    def expire(self, tasks: Mapping[Any, asyncio.Task[None]], batch: object) -> None:
        """The job's timeout ran out: cancel the task running *batch*, if it still runs."""
        task = tasks.get(batch)
        if task is None:
            return
        self.expired = True
        self.issued += 1
        task.cancel()
        self.timer = task.get_loop().call_later(CANCEL_GRACE, self.let_go, task)

    def let_go(self, task: asyncio.Task[None]) -> None:
        """The job ignored its cancellation for ``CANCEL_GRACE``: cancel it for good."""
        self.abandoned = True
        self.issued += 1
        self.timer = None
        task.cancel()

    def take_back(self, task: asyncio.Task[None] | None) -> None:
        """Take back the cancellations the timeout sent to *task* (Python 3.11+)."""
        uncancel: Any = getattr(task, "uncancel", None)
        if uncancel is not None:
            for _ in range(self.issued):
                uncancel()


@types.coroutine
def drive(coro: Coroutine[Any, Any, Any], watch: Watch, first: Any) -> Generator[Any, Any, None]:
    """Await *coro*, whose first step the runner took and which yielded *first*, timing
    each step; see the module docstring."""
    clock = time.perf_counter
    step: Any
    value: Any
    yielded = first
    while True:
        try:
            value = yield yielded
        except GeneratorExit:  # The task's coroutine is being closed.
            coro.close()
            raise
        except asyncio.CancelledError as error:
            watch.cancelled = True
            if watch.abandoned:
                raise IgnoredCancellation from None  # Leave the job where it is.
            step, value = coro.throw, error
        except BaseException as error:
            step, value = coro.throw, error
        else:
            step = coro.send
        began = clock()
        collected = gc_seconds[0]
        try:
            yielded = step(value)
        except StopIteration:
            return
        except asyncio.CancelledError as error:
            if watch.cancelled:
                raise
            raise Carried.of(error) from error
        except GeneratorExit as error:  # Raised by the job, not thrown in: a close is below.
            raise Carried.of(error) from error
        finally:
            took = clock() - began - (gc_seconds[0] - collected)
            if took > watch.slowest:
                watch.slowest = took


@types.coroutine
def in_context(context: Context, coro: Coroutine[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Await *coro* with each of its steps run in *context*, on the task awaiting this.

    What a task of its own with ``context=`` gives (the coroutine sees and sets
    only *context*'s variables), without a task: no scheduling, no second
    task to cancel. Whatever the task sends or throws in goes on into *coro*.
    """
    step: Any = coro.send
    value: Any = None
    while True:
        try:
            yielded = context.run(step, value)
        except StopIteration as returned:
            return returned.value
        try:
            value = yield yielded
        except GeneratorExit:
            context.run(coro.close)
            raise
        except BaseException as error:
            step, value = coro.throw, error
        else:
            step = coro.send
