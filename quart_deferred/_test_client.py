"""How ``deferred.wait_for(response)`` finds the request a test client response answered.

Quart's test client builds its response object after the ASGI call, from
what the app sent, so nothing on it points back at the exchange. For the
exchanges of ``app.test_client()`` (and only those: the client marks its
scope), the middleware makes the response carry its exchange: it replaces
``as_response`` on that one connection object, the method the client calls
to build the response. Nothing is patched at import or by the pytest
plugin, so installing the package changes no other project's tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.typing import ASGISendCallable

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


def exchange_of_response(response: object) -> Any:
    """The exchange that :func:`mark_response` put on *response*, or ``None``."""
    return getattr(response, RESPONSE_ATTRIBUTE, None)
