"""Await a coroutine with every step of it run in a given ``contextvars.Context``.

An asyncio task runs in one context for its whole life. The runner's workers
run many requests' work one batch after another, so each batch's coroutine is
driven through :func:`in_context`, which runs every step of it inside that
request's captured context: what a task created for the batch would have done,
without paying for a task (about 10 µs each on Python 3.11) per request.

The protocol is asyncio's own: whatever the inner coroutine yields (a future
it waits on, or ``None`` for a bare ``sleep(0)``) is yielded to the worker's
task unchanged, and whatever the task sends or throws back (including a
cancellation) goes on into the inner coroutine, inside the context.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from contextvars import Context
import types
from typing import Any, TypeVar

T = TypeVar("T")


@types.coroutine
def in_context(
    coro: Coroutine[Any, Any, T], context: Context, suspending: Callable[[], None]
) -> Generator[Any, Any, T]:
    """Await *coro* with every step of it run in *context*.

    *suspending* is called each time *coro* is about to wait, outside
    *context*: the runner uses it to let another worker take the work that
    is waiting meanwhile.

    A generator made awaitable by ``types.coroutine``, not an object with an
    ``__await__`` method: one generator per batch instead of an object and a
    generator.
    """
    run = context.run
    step: Any = coro.send
    value: Any = None
    while True:
        try:
            yielded = run(step, value)
        except StopIteration as stop:
            result: T = stop.value
            return result
        suspending()
        try:
            value = yield yielded
        except GeneratorExit:  # The worker's coroutine is being closed.
            run(coro.close)
            raise
        except BaseException as error:  # Cancellation, or a throw from a timeout.
            step, value = coro.throw, error
        else:
            step = coro.send
