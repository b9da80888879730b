"""threads: plain jobs on the runner's own daemon threads, and what became of each call."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from typing import Any

import pytest

from quart_deferred._stepping import Carried
from quart_deferred.exceptions import InvalidCallbackError
from quart_deferred.jobs import Job
from quart_deferred.metrics import Keys
from quart_deferred.threads import ThreadCall, ThreadPool

from .conftest import wait

variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")


def call_of(func: Any, *args: Any, key: str | None = None, keys: Keys | None = None) -> ThreadCall:
    """A ThreadCall for ``func(*args)``, as the runner makes one for a plain job."""
    job = Job(func, args, {}, False, "always", key)
    return ThreadCall(job, None, keys if keys is not None else Keys())


async def test_a_call_runs_on_a_daemon_thread_in_a_copy_of_the_context() -> None:
    """The function sees the caller's context variables; what it sets stays on its copy."""
    seen: list[Any] = []

    def job() -> None:
        thread = threading.current_thread()
        seen.append((variable.get(), thread.daemon, thread.name))
        variable.set("set on the thread")

    pool = ThreadPool(2, "test-pool")
    variable.set("the request's")
    await wait(pool.run(asyncio.get_running_loop(), call_of(job)))
    assert seen == [("the request's", True, "test-pool-0")]
    assert variable.get() == "the request's"
    pool.close()


async def test_at_most_size_threads_and_calls_taken_in_order() -> None:
    """With two threads, a third call waits until one is free; calls start in FIFO order."""
    started: list[int] = []
    threads: set[str] = set()
    gates = [threading.Event() for _ in range(3)]
    two_running = threading.Event()

    def job(number: int) -> None:
        started.append(number)
        threads.add(threading.current_thread().name)
        if len(started) == 2:
            two_running.set()
        gates[number].wait(5)

    pool = ThreadPool(2, "test-pool")
    loop = asyncio.get_running_loop()
    futures = [pool.run(loop, call_of(job, number)) for number in range(3)]
    await wait(asyncio.to_thread(two_running.wait, 5))
    assert sorted(started) == [0, 1]  # The third waits for a free thread.
    gates[0].set()
    await wait(futures[0])
    gates[2].set()
    await wait(futures[2])
    assert started[2] == 2
    gates[1].set()
    await wait(futures[1])
    assert threads == {"test-pool-0", "test-pool-1"}
    pool.close()


async def test_a_call_given_up_on_before_it_started_never_runs_and_frees_its_key() -> None:
    """abandon() before a thread takes it: NEVER_STARTED, the function is not called."""
    ran: list[str] = []
    keys = Keys()
    keys.claim("feed:1")
    blocker = threading.Event()
    pool = ThreadPool(1, "test-pool")
    loop = asyncio.get_running_loop()
    busy = pool.run(loop, call_of(blocker.wait, 5))
    waiting = call_of(ran.append, "ran", key="feed:1", keys=keys)
    future = pool.run(loop, waiting)
    assert waiting.abandon() == ThreadCall.NEVER_STARTED
    blocker.set()
    await wait(busy)
    await wait(future)
    assert ran == []
    assert "feed:1" not in keys
    pool.close()


async def test_a_call_given_up_on_while_running_keeps_its_key_until_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """abandon() while it runs: RUNNING; the key is freed, and a line logged, when it ends."""
    caplog.set_level(logging.INFO, logger="quart_deferred")
    keys = Keys()
    keys.claim("feed:1")
    running = threading.Event()
    release = threading.Event()

    def job() -> None:
        running.set()
        release.wait(5)

    pool = ThreadPool(1, "test-pool")
    call = call_of(job, key="feed:1", keys=keys)
    future = pool.run(asyncio.get_running_loop(), call)
    await wait(asyncio.to_thread(running.wait, 5))
    assert call.abandon() == ThreadCall.RUNNING
    assert "feed:1" in keys  # A second copy cannot start while this one runs.
    release.set()
    await wait(future)
    assert "feed:1" not in keys
    assert "finished on its thread after it had been given up on" in caplog.text
    pool.close()


async def test_systemexit_on_a_thread_is_the_jobs_failure_and_the_thread_goes_on() -> None:
    """A BaseException arrives carried, never as itself; the same thread takes the next call."""
    ran: list[str] = []

    def exits() -> None:
        raise SystemExit(2)

    pool = ThreadPool(1, "test-pool")
    loop = asyncio.get_running_loop()
    with pytest.raises(Carried) as caught:
        await wait(pool.run(loop, call_of(exits)))
    assert isinstance(caught.value.__cause__, SystemExit)
    await wait(pool.run(loop, call_of(lambda: ran.append(threading.current_thread().name))))
    assert ran == ["test-pool-0"]  # The one thread survived the SystemExit.
    pool.close()


async def test_a_plain_function_returning_a_coroutine_fails_and_closes_it() -> None:
    """The coroutine is closed (no 'never awaited' warning) and the error says what to do."""

    async def send_mail() -> None: ...

    pool = ThreadPool(1, "test-pool")
    with pytest.raises(InvalidCallbackError, match="returned an awaitable"):
        await wait(pool.run(asyncio.get_running_loop(), call_of(send_mail)))
    pool.close()


async def test_wait_running_says_how_many_calls_are_still_on_their_threads() -> None:
    """wait_running(timeout) returns once the calls end, or after the timeout with their count."""
    release = threading.Event()
    running = threading.Event()

    def job() -> None:
        running.set()
        release.wait(5)

    pool = ThreadPool(1, "test-pool")
    future = pool.run(asyncio.get_running_loop(), call_of(job))
    await wait(asyncio.to_thread(running.wait, 5))
    assert await asyncio.to_thread(pool.wait_running, 0.01) == 1
    release.set()
    assert await asyncio.to_thread(pool.wait_running, 5) == 0
    await wait(future)
    pool.close()
