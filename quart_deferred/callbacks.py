"""Deferred request callbacks: Flask's ``after_this_request`` recipe on Quart's ``g``.

``after_this_request`` stores callbacks on the request's exchange (or, without
one, on ``g``; see _request.py). On the first one in a request, it hands
:func:`run_request_callbacks`, bound to that list's owner, to Quart's own
per-request ``after_this_request``, so
that Quart calls it with the response before the blueprint and app
``after_request`` functions, and apps that never use it pay nothing per
request. Each callback is taken off the list as it is
called, so a callback that raises is never called twice, and the ones after
it still run when Quart passes the resulting 500 response through its
per-request list (and so the dispatcher) again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
import logging
from typing import Any, TypeVar

import quart
from quart.wrappers import Websocket
from werkzeug.sansio.response import Response as _BaseResponse

from ._compat import app_context, current_source
from ._request import DISPATCHED, exchange_of, RequestRecord, RequestState, state_on_g
from .exceptions import ContextError, InvalidCallbackError
from .jobs import callable_name, describe, is_async, log_fields

logger = logging.getLogger("quart_deferred")

ResponseT = TypeVar("ResponseT", bound=_BaseResponse)
# Called with the response; returns None (changed in place) or a response that replaces it.
RequestCallback = (
    Callable[[Any], Awaitable[_BaseResponse | None]] | Callable[[Any], _BaseResponse | None]
)
C = TypeVar("C", bound=RequestCallback)


def after_this_request(func: C) -> C:
    """Call *func* with the response of the current request, before it is sent.

    Use it where the response does not exist yet, such as a ``before_request``
    function that wants to set a cookie. *func* gets the response and may change
    it in place and return ``None``, or return a new response that replaces it.
    ``async def`` and plain functions both work; plain ones run on a thread.
    Returns *func* unchanged, so it also works as a decorator::

        @app.before_request
        async def detect_language() -> None:
            if "lang" not in request.cookies:
                @after_this_request
                def remember_language(response: Response) -> None:
                    response.set_cookie("lang", "de")

    Arguments:
        func: Called as ``func(response)``; returns ``None`` or a response.
    """
    source = current_source()
    if source is None or isinstance(source, Websocket):
        if source is None:
            msg = (
                "after_this_request() was called outside a request. Call it from a "
                "view, an error handler or a before_request function."
            )
        else:
            msg = (
                "after_this_request() was called in a websocket handler, which has "
                "no response to change. Use quart.after_this_websocket for that, or "
                "quart_deferred.after_this_response to run work after the "
                "connection has closed."
            )
        raise ContextError(msg)
    awaited = is_async(func, "after_this_request")
    exchange: RequestRecord | None = exchange_of(source)
    state: RequestRecord | RequestState
    if exchange is None:
        state = state_on_g(source)
    elif exchange.finished or exchange.start is not None:
        msg = (
            f"after_this_request() was called after the response to {describe(source)} "
            "had started to go out, so the callback could never change it. Register "
            "it from a view or a before_request function instead."
        )
        raise ContextError(msg)
    else:
        state = exchange
        exchange.source = source
    callbacks = state.request_callbacks
    if callbacks is DISPATCHED:
        msg = (
            f"after_this_request() was called for {describe(source)} after its deferred "
            "callbacks had run (from an after_request function, or from a callback's own "
            "later code), so the callback would never be called. Register it from a view, "
            "an error handler or a before_request function, or change the response in the "
            "after_request function itself."
        )
        raise ContextError(msg)
    if callbacks is None:
        callbacks = state.request_callbacks = deque()
        # Bound to this request's list, so the dispatcher looks nothing up; Quart's
        # ensure_async sees through a partial to the async function.
        quart.after_this_request(partial(run_request_callbacks, state))
    callbacks.append((func, awaited))
    return func


async def run_request_callbacks(
    state: RequestRecord | RequestState, response: ResponseT
) -> ResponseT:
    """Call the request's deferred callbacks in order (an ``after_request`` function)."""
    callbacks = state.request_callbacks
    assert callbacks is not None  # Registered with the first callback.
    # Each is taken off the list before it is called, so it is never called twice.
    # `while`, not `for`: callbacks may register further callbacks.
    while callbacks:
        func, awaited = callbacks.popleft()
        if awaited:
            result = await func(response)
        else:
            app_ctx = app_context()
            assert app_ctx is not None  # An after_request function runs in one.
            result = await app_ctx.app.ensure_async(func)(response)
        if result is None:
            continue
        if not isinstance(result, _BaseResponse):
            msg = (
                f"The after_this_request callback {callable_name(func)} returned "
                f"{result!r} of type {type(result).__name__}. Change the response in "
                "place and return None, or return a response object to replace it."
            )
            raise InvalidCallbackError(msg)
        response = result  # type: ignore[assignment]
    # All ran: a callback registered from now on could never run. (Not after one
    # raised: the 500 response comes through here again, with an error handler's.)
    state.request_callbacks = DISPATCHED
    return response


def log_callbacks_not_run(exchange: RequestRecord) -> None:
    """Log each ``after_this_request`` callback the exchange ended without calling."""
    for func, _ in exchange.request_callbacks or ():
        name = callable_name(func)
        origin = describe(exchange.source)
        logger.warning(
            "The after_this_request callback %s for %s did not run: the response "
            "was never finalised (the client disconnected, the request failed "
            "with PROPAGATE_EXCEPTIONS set, or it was registered after the "
            "deferred callbacks had run).",
            name,
            origin,
            extra=log_fields(name, exchange.source),
        )
