"""_stepping.drive: how an async job's coroutine is stepped, as the task running it sees it.

Most tests step ``drive`` by hand, as a task would (``send``, ``throw``,
``close``), with an awaitable that yields a marker and returns what is sent
back, so each step is exact and no event loop is involved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
import contextvars
import inspect
import time
from typing import Any

import pytest

from quart_deferred._stepping import Carried, drive, IgnoredCancellation, in_context, Watch


class Step:
    """Yields *marker* to whoever steps the coroutine, and returns what is sent back."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __await__(self) -> Generator[str, Any, Any]:
        return (yield self.marker)


def started(coro: Coroutine[Any, Any, Any], watch: Watch) -> Generator[Any, Any, None]:
    """Take the job's first step as the runner does, and return the driver for the rest,
    started: it has passed the job's first yield on to the task."""
    first = coro.send(None)
    driver = drive(coro, watch, first)
    assert driver.send(None) == first
    return driver


def test_what_the_job_yields_and_receives_passes_through_unchanged() -> None:
    """The task sees each awaitable's yield, and the job gets each value sent back."""
    received: list[Any] = []

    async def job() -> None:
        received.append(await Step("first"))
        received.append(await Step("second"))

    driver = started(job(), Watch())
    assert driver.send(1) == "second"
    with pytest.raises(StopIteration):
        driver.send(2)
    assert received == [1, 2]


def test_an_exception_thrown_in_reaches_the_job_which_may_handle_it() -> None:
    """A throw into the driver is a throw into the job: it can catch it and go on."""
    seen: list[BaseException] = []

    async def job() -> None:
        await Step("first")
        try:
            await Step("second")
        except ValueError as error:
            seen.append(error)
        await Step("after")

    driver = started(job(), Watch())
    driver.send(None)
    assert driver.throw(ValueError("from the task")) == "after"
    with pytest.raises(StopIteration):
        driver.send(None)
    assert [str(error) for error in seen] == ["from the task"]


def test_an_exception_thrown_in_and_not_handled_propagates_as_itself() -> None:
    """Not a Carried: it is the job's failure only if the job raised it itself."""

    async def job() -> None:
        await Step("first")
        await Step("second")

    driver = started(job(), Watch())
    driver.send(None)
    with pytest.raises(KeyError):
        driver.throw(KeyError("k"))


def test_a_cancellation_from_outside_reaches_the_job_and_stays_a_cancellation() -> None:
    """The job's cleanup runs, the CancelledError propagates, and the watch records it."""
    cleaned_up: list[str] = []

    async def job() -> None:
        await Step("first")
        try:
            await Step("second")
        finally:
            cleaned_up.append("cleanup")

    watch = Watch()
    driver = started(job(), watch)
    driver.send(None)
    with pytest.raises(asyncio.CancelledError):
        driver.throw(asyncio.CancelledError())
    assert cleaned_up == ["cleanup"]
    assert watch.cancelled


def test_a_cancellation_the_job_raises_itself_is_its_failure() -> None:
    """Raised by the job, with nothing thrown in, a CancelledError is carried, not propagated."""

    async def job() -> None:
        await Step("first")
        await Step("second")
        raise asyncio.CancelledError("the job's own")

    watch = Watch()
    driver = started(job(), watch)
    driver.send(None)
    with pytest.raises(Carried) as caught:
        driver.send(None)
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)
    assert not watch.cancelled


def test_a_generator_exit_the_job_raises_is_its_failure() -> None:
    """A GeneratorExit raised by the job is carried; it would otherwise look like a close."""

    async def job() -> None:
        await Step("first")
        await Step("second")
        raise GeneratorExit

    driver = started(job(), Watch())
    driver.send(None)
    with pytest.raises(Carried) as caught:
        driver.send(None)
    assert isinstance(caught.value.__cause__, GeneratorExit)


def test_closing_the_driver_closes_the_job() -> None:
    """The task's coroutine being closed (GeneratorExit thrown in) closes the job's too."""
    closed: list[str] = []

    async def job() -> None:
        await Step("first")
        try:
            await Step("second")
        finally:
            closed.append("finally")

    coro = job()
    driver = started(coro, Watch())
    driver.send(None)
    driver.close()
    assert closed == ["finally"]
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def test_an_abandoned_job_is_let_go_of_and_not_resumed() -> None:
    """Once abandoned, the next cancellation is not passed in: the job stays where it was."""
    resumed: list[str] = []

    async def job() -> None:
        await Step("first")
        try:
            await Step("second")
        except asyncio.CancelledError:
            resumed.append("saw the cancellation")
            await Step("ignoring it")

    watch = Watch()
    coro = job()
    driver = started(coro, watch)
    driver.send(None)
    watch.abandoned = True
    with pytest.raises(IgnoredCancellation):
        driver.throw(asyncio.CancelledError())
    assert resumed == []
    assert inspect.getcoroutinestate(coro) == inspect.CORO_SUSPENDED  # Never resumed.
    coro.close()


def test_the_longest_step_is_recorded() -> None:
    """watch.slowest is the longest step the job took without yielding."""

    async def job() -> None:
        await Step("first")
        time.sleep(0.05)  # noqa: ASYNC251  # Blocks the step, as a careless job would.
        await Step("second")

    watch = Watch()
    driver = started(job(), watch)
    driver.send(None)
    assert watch.slowest >= 0.05


async def test_context_variables_are_the_tasks_seen_and_set_by_the_job() -> None:
    """Driven inside a task, the job reads and writes that task's context: what the job sets
    is seen after it by the next job of the batch."""
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")

    async def job() -> None:
        assert variable.get() == "the request's"
        await asyncio.sleep(0)
        variable.set("set by the job")
        await asyncio.sleep(0)

    async def task() -> str:
        variable.set("the request's")
        coro = job()
        first = coro.send(None)
        await drive(coro, Watch(), first)
        return variable.get()

    assert await asyncio.create_task(task()) == "set by the job"
    assert variable.get() == "unset"  # The task's context was a copy.


async def test_a_real_task_cancellation_is_delivered_to_a_driven_job() -> None:
    """task.cancel() while the job waits on a future: the job sees it, the task ends cancelled."""
    waiting = asyncio.Event()
    seen: list[str] = []

    async def job() -> None:
        waiting.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def task() -> None:
        coro = job()
        first = coro.send(None)
        await drive(coro, Watch(), first)

    running = asyncio.create_task(task())
    await waiting.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert seen == ["cancelled"]


VARIABLE: contextvars.ContextVar[str] = contextvars.ContextVar("VARIABLE", default="outside")


def test_in_context_runs_each_step_in_its_context_and_keeps_what_it_sets_there() -> None:
    """Every step sees the given context; what the coroutine sets stays in it, not outside."""
    seen: list[str] = []

    async def job() -> str:
        seen.append(VARIABLE.get())
        VARIABLE.set("set by the job")
        sent = await Step("waiting")
        seen.append(VARIABLE.get())
        return f"done with {sent}"

    context = contextvars.Context()
    context.run(VARIABLE.set, "given")
    driver = in_context(context, job())
    assert driver.send(None) == "waiting"
    assert VARIABLE.get() == "outside"  # Between steps: the caller's context.
    with pytest.raises(StopIteration) as returned:
        driver.send("the answer")
    assert returned.value.value == "done with the answer"
    assert seen == ["given", "set by the job"]
    assert context[VARIABLE] == "set by the job" and VARIABLE.get() == "outside"


def test_in_context_passes_a_thrown_cancellation_and_a_close_into_the_coroutine() -> None:
    """A CancelledError thrown in reaches the coroutine (in its context); a close closes it."""
    events: list[str] = []

    async def job() -> None:
        try:
            await Step("first")
        except asyncio.CancelledError:
            events.append(f"cancelled, seeing {VARIABLE.get()}")
            await Step("after the cancellation")
        try:
            await Step("second")
        finally:
            events.append("closed")

    context = contextvars.Context()
    context.run(VARIABLE.set, "its own")
    driver = in_context(context, job())
    assert driver.send(None) == "first"
    assert driver.throw(asyncio.CancelledError()) == "after the cancellation"
    assert driver.send(None) == "second"
    driver.close()
    assert events == ["cancelled, seeing its own", "closed"]


async def test_in_context_on_a_task_raises_what_the_coroutine_raises() -> None:
    """Awaited by a real task: the coroutine's error comes out unchanged."""

    async def job() -> None:
        await asyncio.sleep(0)
        raise LookupError("from the job")

    with pytest.raises(LookupError, match="from the job"):
        await in_context(contextvars.Context(), job())
