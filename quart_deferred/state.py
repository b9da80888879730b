"""Per-request state, kept on ``g._quart_deferred``.

Both kinds of callback hang off one small object: the ``after_this_request``
list that the response-phase dispatcher consumes, and the post-response jobs
that the ASGI layer hands to the runner once the exchange is over. Once post-
response work is registered, the object also holds the request's
``contextvars.Context``, captured once, in which that work later runs.

The context refers back to ``g``, and so to this object: a reference cycle
that the exchange breaks when it hands the context to the runner, so that a
finished request is freed by reference counting, not left to the garbage
collector. For the same reason the state finds its exchange through the ASGI
scope instead of keeping a reference to it.
"""

from __future__ import annotations

import asyncio
from contextvars import Context, copy_context
from dataclasses import dataclass, field
from typing import Any, TYPE_CHECKING

from quart.globals import _cv_app

from ._compat import current_source
from .exceptions import ContextError
from .jobs import describe

if TYPE_CHECKING:
    from quart.wrappers import BaseRequestWebsocket

    from .jobs import Job
    from .post_response import Exchange

G_KEY = "_quart_deferred"
SCOPE_KEY = "quart_deferred.exchange"


@dataclass(slots=True, eq=False)
class RequestState:
    source: BaseRequestWebsocket
    context: Context | None = None
    request_callbacks: list[tuple[Any, bool]] = field(default_factory=list)
    request_callbacks_ran: int = 0
    response_jobs: list[Job] = field(default_factory=list)

    @property
    def exchange(self) -> Exchange | None:
        exchange: Exchange | None = self.source.scope.get(SCOPE_KEY)  # type: ignore[assignment]
        return exchange

    def capture_context(self) -> None:
        if self.context is None:
            self.context = copy_context()


def state_for(source: BaseRequestWebsocket) -> RequestState:
    """Return the state of *source*, creating it on first use."""
    g = _cv_app.get().g
    # g.__dict__, not getattr(): Flask's g raises and catches on a miss (1.5 µs).
    state: RequestState | None = g.__dict__.get(G_KEY)
    # `g` can outlive one request (an app context pushed around several test
    # requests), so the state must belong to *this* request to be reused.
    if state is None or state.source is not source:
        state = RequestState(source)
        g.__dict__[G_KEY] = state
        exchange = state.exchange
        if exchange is not None:
            exchange.request_state = state
    return state


def existing_state() -> RequestState | None:
    """Return the current request's state if something created it, without creating it."""
    app_ctx = _cv_app.get(None)
    if app_ctx is None:
        return None
    state: RequestState | None = app_ctx.g.__dict__.get(G_KEY)
    if state is None or state.source is not current_source():
        return None
    return state


def on_event_loop() -> bool:
    """Whether this thread is running an event loop (not a plain function's thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def require_exchange(state: RequestState, caller: str) -> Exchange:
    """Return the exchange the state belongs to, or raise why work cannot be added to it."""
    exchange = state.exchange
    if exchange is None:
        msg = (
            f"{caller}() was called in a request that did not come through an app "
            "wrapped by QuartDeferred, so nothing will see its response go out. "
            "Call QuartDeferred(app) or deferred.init_app(app) first, and in tests "
            "send requests with app.test_client() rather than test_request_context()."
        )
        raise ContextError(msg)
    if exchange.finished:
        msg = (
            f"{caller}() was called after the response to {describe(state.source)} had "
            "already been sent, so there is no 'after the response' left to wait for. "
            "Use deferred.start_soon() to start more work from here"
            + ("." if on_event_loop() else " (from an async def job: plain jobs run on a thread).")
        )
        raise ContextError(msg)
    return exchange
