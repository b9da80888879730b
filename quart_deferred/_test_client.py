"""``deferred.wait_for(response)``: find the request a test client response answered, and
wait for its work.

Quart's test client builds its response object after the ASGI call, from
what the app sent, so nothing on it points back at the exchange. For the
exchanges of ``app.test_client()`` (and only those: the client marks its
scope), the middleware makes the response carry its exchange: it replaces
``as_response`` on that one connection object, the method the client calls
to build the response. Nothing is patched at import or by the pytest
plugin, so installing the package changes no other project's tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from hypercorn.typing import ASGISendCallable

from .exceptions import ContextError

RESPONSE_ATTRIBUTE = "quart_deferred_exchange"


def mark_response(send: ASGISendCallable, exchange: object) -> None:
    """Make the response that the test client builds for *send*'s connection carry *exchange*.

    *send* is the bound ``_asgi_send`` method of Quart's test connection (or of
    a ``http_connection_class`` of the user's). A connection without an
    ``as_response`` method is left alone: ``wait_for`` then says it cannot tell.
    """
    connection = getattr(send, "__self__", None)
    as_response: Callable[[], Awaitable[Any]] | None = getattr(connection, "as_response", None)
    if as_response is None:
        return

    async def as_marked_response() -> Any:
        response = await as_response()
        setattr(response, RESPONSE_ATTRIBUTE, exchange)
        return response

    try:
        connection.as_response = as_marked_response  # type: ignore[union-attr]
    except AttributeError:  # A connection class with __slots__: nothing to mark it with.
        pass


async def work_of(response: object, timeout: float | None) -> list[BaseException]:  # noqa: ASYNC109
    """Wait for the work of the exchange *response* answered: ``deferred.wait_for()``."""
    exchange = getattr(response, RESPONSE_ATTRIBUTE, None)
    if exchange is None:
        msg = (
            f"deferred.wait_for() cannot tell which request {response!r} answered. It "
            "takes a response from app.test_client() of an app wrapped by this "
            "QuartDeferred. For other clients, use await deferred.join()."
        )
        raise ContextError(msg)
    # Set by _hand_over.hand_over for the exchanges of the test client that had work.
    done: asyncio.Future[list[BaseException]] | None = getattr(exchange, "work_done", None)
    if done is None:  # The request left no post-response work.
        return []
    with anyio.move_on_after(timeout):
        return list(await asyncio.shield(done))
    msg = f"deferred.wait_for() gave up after {timeout}s; the work is still going."
    raise TimeoutError(msg)
