"""The ASGI layer: an exchange for each request and connection, and the lifespan's drain.

:class:`PostResponseMiddleware` wraps ``app.asgi_app``. It gives each HTTP
request an :class:`~quart_deferred._exchange.Exchange` (a test client's
request a ``TestClientExchange``, whose response ``wait_for`` can find) and
each websocket a ``WebsocketExchange``, keeps it in the scope, and ends it
when the ASGI call ends. The exchange watches the messages and reports once
how the exchange ended, and the runner runs the work on tasks of its own:
never on the response path, and never in Quart's handler task (which the
server's ``http.disconnect`` would cancel). At ``lifespan.shutdown`` it
drains the work before Quart hears of the shutdown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TYPE_CHECKING

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    Scope,
)
from quart import Quart

from ._compat import from_test_client
from ._exchange import Exchange, WebsocketExchange
from ._request import SCOPE_KEY
from ._test_client import TestClientExchange

if TYPE_CHECKING:
    from .app_state import AppState

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]


class PostResponseMiddleware:
    """Wrap ``app.asgi_app`` so post-response jobs start once the response is out."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        # Wrapping Quart's own asgi_app, send HTTP requests straight to the app's
        # asgi_http_class, as that method would: one coroutine level less on every
        # request. Any other app (another middleware) is called.
        self._direct_http = (
            getattr(app, "__func__", None) is Quart.asgi_app
            and getattr(app, "__self__", None) is state.app
        )

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        kind = scope["type"]
        writable: dict[str, Any] = scope  # type: ignore[assignment]
        if kind == "http":
            if not self.state.lifespan_known:
                self.state.without_lifespan(writable)
            exchange: Exchange
            if from_test_client(writable):
                exchange = TestClientExchange(self.state, send, receive, self.state.extension.hooks)
            else:
                exchange = Exchange(self.state, send, receive, self.state.extension.hooks)
            writable[SCOPE_KEY] = exchange
            try:
                if self._direct_http:
                    quart = self.state.app
                    handler = quart.asgi_http_class(quart, scope)  # type: ignore[arg-type]
                    await handler(exchange.receive_http, exchange.send_http)
                else:
                    await self.app(scope, exchange.receive_http, exchange.send_http)
            finally:
                exchange.end()
        elif kind == "websocket":
            connection = WebsocketExchange(self.state, send, receive)
            writable[SCOPE_KEY] = connection
            complete = False
            try:
                await self.app(scope, connection.receive_websocket, connection.send_websocket)
                complete = not connection.failed
            finally:
                connection.close(complete=complete)
        elif kind == "lifespan":
            await self.app(scope, self._draining_first(receive), send)
        else:
            await self.app(scope, receive, send)

    def _draining_first(self, receive: ASGIReceiveCallable) -> ASGIReceiveCallable:
        """Drain deferred work when the server announces shutdown, before Quart hears of it.

        So the drain comes before every after_serving and while_serving
        shutdown step (whose order differs between Quart versions), and the
        resources those close are still open for the work.
        """

        async def receive_lifespan() -> ASGIReceiveEvent:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.state.lifespan_known = True
            elif message["type"] == "lifespan.shutdown":
                await self.state.drain()
            return message

        return receive_lifespan
