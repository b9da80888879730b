"""The exchanges: what the ASGI layer sees of each request and connection, and reports once.

An :class:`Exchange` watches the messages of one HTTP request. Once the
server has accepted every byte the client was promised (body bytes reaching
the content-length, or the final message of a response without one), the
response is complete, and the exchange reports that to
_hand_over.hand_over, which decides what of the request's work runs. If
the exchange ends without a complete response (client gone, crash, response
timeout), it reports that when the ASGI call ends (:meth:`Exchange.end`).
A :class:`WebsocketExchange` reports when the connection's ASGI call ends.
The exchange is also where the request keeps what it registers (see
_request.py).
"""

from __future__ import annotations

from contextvars import copy_context
from typing import Any, TYPE_CHECKING

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
)
from quart import Quart

from ._compat import current_source
from ._hand_over import hand_over
from ._request import exchange_of
from .callbacks import log_callbacks_not_run
from .jobs import Batch, Hook, Waiter

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from quart.wrappers import BaseRequestWebsocket

    from ._request import RequestCallbacks
    from .app_state import AppState


class Exchange:
    """One HTTP request as the ASGI layer sees it.

    It watches the messages and, once, reports how the exchange ended to
    _hand_over.hand_over. It is also where the request keeps what it
    registers (see _request.py): its ``after_this_request`` callbacks, and
    the batch of post-response jobs. Every request makes one, so it holds
    only what a request that registers nothing needs.
    """

    __slots__ = (
        "_receive",
        "_send",
        "app_state",
        "batch",
        "disconnected",
        "finished",
        "hooks",
        "remaining",
        "request_callbacks",
        "runner",
        "source",
        "start",
    )
    # What waits for the work handed over (_test_client.TestClientExchange has one).
    waiter: Waiter | None = None

    def __init__(
        self,
        app_state: AppState,
        send: ASGISendCallable,
        receive: ASGIReceiveCallable,
        hooks: tuple[Hook, ...],
    ) -> None:
        self.app_state = app_state
        # The runner of the loop serving the exchange: its work goes there, and
        # registrations are admitted by it (from a plain view's thread too).
        self.runner = app_state.runner()
        self._send = send
        self._receive = receive
        self.disconnected = False  # The server has reported http.disconnect.
        # The request, once it has registered something; for log lines.
        self.source: BaseRequestWebsocket | None = None
        self.request_callbacks: RequestCallbacks | None = None  # Those not called yet.
        # The request's post-response jobs and context; created with the first job.
        self.batch: Batch | None = None
        self.hooks = hooks  # App-wide @deferred.after_response functions.
        self.finished = False
        # The response's start message (status and headers) once it has been sent.
        self.start: dict[str, Any] | None = None
        # Body bytes the client was promised (its content-length) and has not been
        # sent yet; None without a content-length, or when no work watched the start.
        self.remaining: int | None = None

    def batch_for(self, source: BaseRequestWebsocket) -> Batch:
        """Return the batch of this request's work, capturing its context on first use."""
        batch = self.batch
        if batch is None:
            batch = self.batch = Batch([], copy_context(), source)
        return batch

    def send_http(self, message: ASGISendEvent) -> Awaitable[None]:
        # A plain function returning the awaitable, not a coroutine: most
        # messages pass straight through without an extra frame.
        event: dict[str, Any] = message  # type: ignore[assignment]
        if self.batch is None and not self.hooks:  # Nothing to hand over (yet).
            if event["type"] == "http.response.start":
                self.start = event
            return self._send(message)
        kind = event["type"]
        if kind == "http.response.body":
            if self.finished:  # Complete already: the empty message after the last bytes.
                return self._send(message)
            if not event.get("more_body", False):
                start = self.start
                if start is None or not start.get("trailers", False):  # Else trailers end it.
                    return self._send_final(message)
            elif self.remaining is not None:
                # The client has every byte it was promised once the server has these:
                # the empty final message after them may never go out (the client may
                # close at once, and the server then cancels Quart's handler).
                self.remaining -= len(event.get("body", b""))
                if self.remaining <= 0 and not self.start.get("trailers", False):  # type: ignore[union-attr]
                    return self._send_final(message)
        elif kind == "http.response.start":
            self.start = event
            self.remaining = _content_length(event)
        elif (
            (kind == "http.response.trailers" and not event.get("more_trailers", False))
            or kind == "http.response.pathsend"
            or (kind == "http.response.zerocopysend" and not event.get("more_body", False))
        ):
            return self._send_final(message)
        return self._send(message)

    async def receive_http(self) -> ASGIReceiveEvent:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        return message

    async def _send_final(self, message: ASGISendEvent) -> None:
        runner = self.runner
        runner.hold()
        try:
            batch = self.batch
            if batch is not None and batch.calls is not None:
                # Durable work on disk before the client can hold a complete response.
                await batch.calls[0].runtime.promise(batch.calls)
            await self._send(message)
        except BaseException:
            self.finish(complete=False)
            raise
        else:
            # A send after the server reported the client gone completes nothing,
            # whatever the server did with it (hypercorn drops it without a word).
            self.finish(complete=not self.disconnected)
        finally:
            runner.release()

    def finish(self, *, complete: bool) -> None:
        """End the exchange: hand its post-response jobs to the runner, once.

        *complete* says whether the client got the whole response.
        """
        if self.finished:
            return
        self.finished = True
        try:
            if self.request_callbacks:
                log_callbacks_not_run(self)
            if self.batch is not None or self.hooks:
                self._submit(complete)
        finally:
            # The request refers to its exchange through its scope: let go of it,
            # so that reference counting, not the garbage collector, frees both.
            # The start message is not needed either while the work waits.
            self.source = self.start = None

    def end(self) -> None:
        """The ASGI call has ended: finish what is left as a failure, and let go of the server.

        An exchange that ended without its final message going out finishes
        what is left (jobs, callbacks never called, hooks) as a failure.
        """
        if not self.finished and (self.batch is not None or self.request_callbacks or self.hooks):
            self.finish(complete=False)
        self.source = None  # See finish().
        # The server's send is a method of its stream, which holds the scope,
        # which holds the exchange: let go of it, or that cycle keeps every
        # request's stream alive until the garbage collector finds it. Quart's
        # handler task may still be sending (the server cancelled the call):
        # those sends go nowhere, as the server would have ignored them.
        self._send = _gone
        self._receive = _disconnected

    def _submit(self, complete: bool) -> None:
        batch, self.batch = self.batch, None  # Break the cycle through its context.
        hand_over(self.runner, batch, self.source, self.hooks, complete, self.start, self.waiter)


def _content_length(start: dict[str, Any]) -> int | None:
    """The content-length of a response's start message, or ``None`` without a valid one."""
    for name, value in start.get("headers", ()):
        if len(name) == 14 and name.lower() == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
            return length if length >= 0 else None
    return None


class WebsocketExchange(Exchange):
    """One websocket connection: its work is handed over when the connection's ASGI call ends.

    A websocket "succeeds" when the app's handler accepted the connection and
    ended without raising; a client that closes the connection is a normal end
    of a websocket. A handler that raised (Quart catches it, sends its
    ``got_websocket_exception`` signal and closes with 1000) fails, and so does
    a connection closed before it was accepted. App-wide hooks see HTTP
    exchanges only.
    """

    __slots__ = ("_held", "failed")

    def __init__(
        self, app_state: AppState, send: ASGISendCallable, receive: ASGIReceiveCallable
    ) -> None:
        super().__init__(app_state, send, receive, ())
        self._held = False  # Counted in its runner's pending: see _hold().
        self.failed = False  # The handler raised: see websocket_failed().

    async def send_websocket(self, message: ASGISendEvent) -> None:
        event: dict[str, Any] = message  # type: ignore[assignment]
        kind = event["type"]
        if kind == "websocket.accept":
            self.start = {"status": 101}
        elif kind == "websocket.http.response.start":
            self.start = event
        elif kind == "websocket.close":
            if self.start is None:
                self.start = {"status": 403}  # What servers answer to a close before accept.
            self._hold()
        await self._send(message)

    async def receive_websocket(self) -> ASGIReceiveEvent:
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self._hold()
        return message

    def _hold(self) -> None:
        """Make ``join()`` wait for this connection's work from the moment its end is in sight."""
        if not self._held and self.batch is not None:
            self._held = True
            self.runner.hold()

    def close(self, *, complete: bool) -> None:
        """The connection's ASGI call has ended: hand its work over, and let go of the server."""
        self.finish(complete=complete)
        self._send = _gone  # As for HTTP: see Exchange.end().
        self._receive = _nothing_more

    def finish(self, *, complete: bool) -> None:
        try:
            super().finish(complete=complete)
        finally:
            if self._held:
                self._held = False
                self.runner.release()


async def capture_context() -> None:
    """Capture the request's context for app-wide hooks (a ``before_request`` function)."""
    source = current_source()
    if source is not None:
        exchange: Exchange | None = exchange_of(source)
        if exchange is not None and not exchange.finished:
            exchange.batch_for(source)


async def websocket_failed(sender: Quart, exception: BaseException) -> None:
    """Mark the current websocket's exchange as failed (a ``got_websocket_exception`` receiver)."""
    source = current_source()
    exchange = None if source is None else exchange_of(source)
    if isinstance(exchange, WebsocketExchange):
        exchange.failed = True


async def _gone(message: ASGISendEvent) -> None:
    """The send of an exchange whose ASGI call has ended: nothing reaches the server now."""


async def _disconnected() -> ASGIReceiveEvent:
    """The receive of an HTTP exchange whose ASGI call has ended."""
    return {"type": "http.disconnect"}


async def _nothing_more() -> ASGIReceiveEvent:
    """The receive of a connection whose ASGI call has ended."""
    return {"type": "websocket.disconnect", "code": 1006}
