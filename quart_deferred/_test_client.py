"""``deferred.wait_for(response)``: all the bookkeeping for waiting on one test request's work.

Quart's test client builds its response object after the ASGI call, from
what the app sent, so nothing on it points back at the exchange. For the
exchanges of ``app.test_client()`` (and only those: the client marks its
scope), the middleware makes a :class:`TestClientExchange`, which makes the
response carry it: it replaces ``as_response`` on that one connection
object, the method the client calls to build the response. When the
exchange hands its work over, it gives the batch a :class:`WorkWaiter`,
which the runner's ledger tells of each failure and the runner settles when
the batch ends. Nothing is patched at import or by the pytest plugin, so
installing the package changes no other project's tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TYPE_CHECKING

import anyio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable

from ._exchange import Exchange
from .exceptions import ContextError
from .jobs import Hook

if TYPE_CHECKING:
    from .app_state import AppState

RESPONSE_ATTRIBUTE = "quart_deferred_exchange"


class WorkWaiter:
    """The errors of one test request's work, and a future settled when it has all ended."""

    __slots__ = ("errors", "future")

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.future: asyncio.Future[list[BaseException]] = (
            asyncio.get_running_loop().create_future()
        )

    def add(self, error: BaseException) -> None:
        self.errors.append(error)

    def settle(self) -> None:
        if not self.future.done():
            self.future.set_result(self.errors)


class TestClientExchange(Exchange):
    """An exchange with Quart's test client: ``deferred.wait_for(response)`` can wait for it."""

    __slots__ = ("waiter",)

    def __init__(
        self,
        app_state: AppState,
        send: ASGISendCallable,
        receive: ASGIReceiveCallable,
        hooks: tuple[Hook, ...],
    ) -> None:
        super().__init__(app_state, send, receive, hooks)
        self.waiter: WorkWaiter | None = None  # From the hand-over on, if there was work.
        mark_response(send, self)

    def _submit(self, complete: bool) -> None:
        self.waiter = WorkWaiter()
        super()._submit(complete)


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
    waiter: WorkWaiter | None = exchange.waiter
    if waiter is None:  # The request left no post-response work.
        return []
    with anyio.move_on_after(timeout):
        return list(await asyncio.shield(waiter.future))
    msg = f"deferred.wait_for() gave up after {timeout}s; the work is still going."
    raise TimeoutError(msg)
