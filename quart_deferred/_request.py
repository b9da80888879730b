"""A request's record of what it registered: the exchange it came through, or ``g``.

A request that came through the ASGI layer has an
:class:`~quart_deferred._exchange.Exchange` in its scope, one dictionary
lookup away (:func:`exchange_of`), never shared with another request. The exchange holds both
kinds of callback: the ``after_this_request`` list that the response-phase
dispatcher consumes, and the batch of post-response jobs that it hands to
the runner once the response is out.

A request that did not come through the ASGI layer (``test_request_context()``,
an app without the extension) keeps its ``after_this_request`` callbacks in
a :class:`RequestState` on ``g._quart_deferred``; it has no response to wait
for, so it takes no post-response work.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol, TYPE_CHECKING

from ._compat import app_context
from .exceptions import ContextError
from .jobs import describe

if TYPE_CHECKING:
    from quart.wrappers import BaseRequestWebsocket

    from .app_state import AppState
    from .jobs import Batch
    from .runner import TaskRunner

G_KEY = "_quart_deferred"
SCOPE_KEY = "quart_deferred.exchange"

# (callback, is_async) in registration order; each is taken off the front as it is called.
RequestCallbacks = deque[tuple[Any, bool]]
# A request's callbacks once the dispatcher has called them all: empty, and closed.
DISPATCHED: RequestCallbacks = deque(maxlen=0)


class RequestRecord(Protocol):
    """What ``after_this_request`` needs of an exchange (_exchange.Exchange is one)."""

    source: BaseRequestWebsocket | None  # The request, once it has registered something.
    request_callbacks: RequestCallbacks | None  # Those not called yet.
    finished: bool  # The response is complete, or the exchange is over.
    start: dict[str, Any] | None  # The response's start message, once sent.


class WorkRecord(RequestRecord, Protocol):
    """What post-response registrations need of an exchange (_exchange.Exchange is one)."""

    app_state: AppState  # The app's durable runtime.
    runner: TaskRunner  # Admits the request's work, and runs it.
    batch: Batch | None  # The request's post-response jobs and context, from its first job.


class RequestState:
    """The ``after_this_request`` callbacks of a request without an exchange."""

    __slots__ = ("request_callbacks", "source")

    def __init__(self, source: BaseRequestWebsocket) -> None:
        self.source: BaseRequestWebsocket | None = source
        self.request_callbacks: RequestCallbacks | None = None


def exchange_of(source: BaseRequestWebsocket) -> Any:
    """Return the exchange *source* came through (``None`` without the ASGI layer).

    Typed ``Any`` so this module need not know the exchange's class: callers
    annotate what they read (a :class:`RequestRecord`, a :class:`WorkRecord`,
    or _exchange's ``Exchange`` itself), and only the middleware puts anything under the key.
    """
    return source.scope.get(SCOPE_KEY)


def state_on_g(source: BaseRequestWebsocket) -> RequestState:
    """Return the state kept on ``g`` for *source*, creating it on first use."""
    app_ctx = app_context()
    assert app_ctx is not None  # A request context implies an app context.
    g = app_ctx.g
    # g.__dict__, not getattr(): Flask's g raises and catches an exception on a miss.
    state: RequestState | None = g.__dict__.get(G_KEY)
    # `g` can outlive one request (an app context pushed around several test
    # requests), so the state must belong to *this* request to be reused.
    if state is None or state.source is not source:
        state = g.__dict__[G_KEY] = RequestState(source)
    return state


def on_event_loop() -> bool:
    """Whether this thread is running an event loop (not a plain function's thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def cannot_add_work(source: BaseRequestWebsocket, finished: bool, caller: str) -> ContextError:
    """Say why *caller* cannot add post-response work to *source*'s exchange."""
    if not finished:
        msg = (
            f"{caller}() was called in a request that did not come through an app "
            "wrapped by QuartDeferred, so nothing will see its response go out. "
            "Call QuartDeferred(app) or deferred.init_app(app) first, and in tests "
            "send requests with app.test_client() rather than test_request_context()."
        )
    else:
        msg = (
            f"{caller}() was called after the response to {describe(source)} had "
            "already been sent, so there is no 'after the response' left to wait for. "
            "Use deferred.start_soon() to start more work from here"
            + ("." if on_event_loop() else " (from an async def job: plain jobs run on a thread).")
        )
    return ContextError(msg)
