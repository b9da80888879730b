"""Post-response work: an ASGI layer that sees the response go out complete.

:class:`PostResponseMiddleware` wraps ``app.asgi_app``. For each HTTP exchange
it watches the messages the app sends; once the server has accepted every
byte the client was promised (body bytes reaching the content-length, or the
final message of a response without one), the response is complete, and the
request's post-response jobs are handed to the runner, which runs them on
tasks of its own: never on the response path, and never in Quart's handler
task (which the server's ``http.disconnect`` would cancel). If the exchange
ends without a complete response (client gone, crash, response timeout), the
jobs are handed over when the ASGI call ends. Websocket work is handed over
when the connection's ASGI call ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import Context, copy_context
from dataclasses import dataclass
import logging
from typing import Any, Concatenate, overload, ParamSpec, TYPE_CHECKING, TypeVar

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from quart import Quart
from werkzeug.datastructures import Headers

from ._compat import current_source, from_test_client
from ._request import cannot_add_work, exchange_of, SCOPE_KEY
from ._test_client import mark_response
from .callbacks import log_callbacks_not_run
from .exceptions import ContextError
from .jobs import (
    Batch,
    check_key,
    check_when,
    describe,
    Hook,
    is_async,
    Job,
    log_fields,
    NO_KWARGS,
    When,
)

if TYPE_CHECKING:
    from quart.wrappers import BaseRequestWebsocket

    from ._request import RequestCallbacks
    from .app_state import AppState
    from .runner import TaskRunner

P = ParamSpec("P")
R = TypeVar("R")
A1 = TypeVar("A1")
A2 = TypeVar("A2")
A3 = TypeVar("A3")
A4 = TypeVar("A4")
F = TypeVar("F", bound=Callable[[], Any])
_MISSING: Any = object()  # No function given: the decorator form.
ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]

logger = logging.getLogger("quart_deferred")


@dataclass(frozen=True, slots=True)
class Delivery:
    """What went out for one exchange; given to ``@deferred.after_response`` hooks.

    Attributes:
        status_code: The status sent with ``http.response.start``, or ``None``
            if the exchange ended before a response started.
        complete: Whether the server accepted every byte the client was
            promised: body bytes reaching the content-length, or the final
            message of a response without one.
        raw_headers: The headers as sent, as ASGI byte pairs.
    """

    status_code: int | None
    complete: bool
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def headers(self) -> Headers:
        """Return a new ``Headers`` object decoded from what was sent."""
        return Headers(
            [(key.decode("latin1"), value.decode("latin1")) for key, value in self.raw_headers]
        )

    @property
    def successful(self) -> bool:
        """Whether ``when="success"`` work runs for this exchange."""
        return _successful(self.complete, self.status_code)


def _successful(complete: bool, status: int | None) -> bool:
    """The response was complete and its status below 400: what ``when="success"`` means."""
    return complete and status is not None and status < 400


class Exchange:
    """One HTTP request as the ASGI layer sees it.

    It is also where the request keeps what it registers (see _request.py): its
    ``after_this_request`` callbacks, and the batch of post-response jobs
    that it hands to the runner once the response is out. Every request
    makes one, so it holds only what a request that registers nothing needs.
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
        "source",
        "start",
        "work_done",  # Only with track_work; read with getattr().
    )
    # Keep a future that settles when the exchange's work has ended, for
    # ``deferred.wait_for(response)``: true for TestClientExchange only.
    track_work = False

    def __init__(
        self,
        app_state: AppState,
        send: ASGISendCallable,
        receive: ASGIReceiveCallable,
        hooks: tuple[Hook, ...],
    ) -> None:
        self.app_state = app_state
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
        runner = self.app_state.runner()
        runner.pending += 1  # join() waits for this exchange's work from now on.
        try:
            await self._send(message)
        except BaseException:
            self.finish(complete=False, runner=runner)
            raise
        else:
            # A send after the server reported the client gone completes nothing,
            # whatever the server did with it (hypercorn drops it without a word).
            self.finish(complete=not self.disconnected, runner=runner)
        finally:
            runner.release()

    def finish(self, *, complete: bool, runner: TaskRunner | None = None) -> None:
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
                self._submit(complete, runner or self.app_state.runner())
        finally:
            # The request refers to its exchange through its scope: let go of it,
            # so that reference counting, not the garbage collector, frees both.
            # The start message is not needed either while the work waits.
            self.source = self.start = None

    def _submit(self, complete: bool, runner: TaskRunner) -> None:
        batch, self.batch = self.batch, None  # Break the cycle through its context.
        start = self.start
        status: int | None = None if start is None else start["status"]
        successful = _successful(complete, status)
        jobs: list[Job]
        if batch is None:  # App-wide hooks for a request that never reached Quart's hooks.
            jobs = []
            batch = Batch(jobs, Context(), self.source, fresh_app_context=True)
        else:
            jobs = batch.jobs
            self.app_state.counters.held -= len(jobs)  # Registered: now waiting, or skipped below.
        batch.status = status  # For tracing, and for the line that logs a skipped job.
        for job in jobs:
            if job.when != "always":  # Only then is there anything to filter out.
                jobs = batch.jobs = [
                    job for job in jobs if self._runs(job, complete, successful, batch)
                ]
                break
        if self.hooks:
            headers = () if start is None else tuple(start.get("headers", ()))
            delivery = Delivery(status, complete, headers)
            for hook in self.hooks:
                if hook.when == "always" or (hook.when == "success") is successful:
                    jobs.append(hook.job_for(delivery))
        if jobs:
            if self.track_work:
                batch.done = self.work_done = runner.loop.create_future()
                batch.errors = []
            runner.submit(batch)

    def _runs(self, job: Job, complete: bool, successful: bool, batch: Batch) -> bool:
        """Whether *job* runs for how the exchange ended; a job that does not is skipped."""
        if job.when == "always" or (job.when == "success") is successful:
            return True
        self.app_state.counters.skipped += 1
        if job.key is not None:
            self.app_state.keys.discard(job.key)
        name = job.name
        logger.debug(
            "Skipped %s for %s: when=%r and the exchange ended with status %s (%s).",
            name,
            describe(batch.source),
            job.when,
            batch.status,
            "complete" if complete else "incomplete",
            extra=log_fields(name, batch.source),
        )
        return False


class TestClientExchange(Exchange):
    """An exchange with Quart's test client: ``deferred.wait_for(response)`` can wait for it."""

    __slots__ = ()
    track_work = True


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
        self._held: TaskRunner | None = None
        self.failed = False  # The handler raised: see handler_failed().

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
        if self._held is None and self.batch is not None:
            runner = self._held = self.app_state.runner()
            runner.pending += 1

    def finish(self, *, complete: bool, runner: TaskRunner | None = None) -> None:
        try:
            super().finish(complete=complete, runner=self._held)
        finally:
            if self._held is not None:
                self._held.release()
                self._held = None


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


class PostResponseMiddleware:
    """Wrap ``app.asgi_app`` so post-response jobs start once the response is out."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        # Wrapping Quart's own asgi_app, send HTTP requests straight to the app's
        # asgi_http_class, as that method would: one coroutine level less on every
        # request (about 1 µs here). Any other app (another middleware) is called.
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
                mark_response(send, exchange)
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
                # The exchange ended without its final message going out: finish
                # what is left (jobs, callbacks never called, hooks) as a failure.
                if not exchange.finished and (
                    exchange.batch is not None or exchange.request_callbacks or exchange.hooks
                ):
                    exchange.finish(complete=False)
                exchange.source = None  # See finish().
                # The server's send is a method of its stream, which holds the scope,
                # which holds the exchange: let go of it, or that cycle keeps every
                # request's stream alive until the garbage collector finds it. Quart's
                # handler task may still be sending (the server cancelled the call):
                # those sends go nowhere, as the server would have ignored them.
                exchange._send = _gone
                exchange._receive = _disconnected
        elif kind == "websocket":
            connection = WebsocketExchange(self.state, send, receive)
            writable[SCOPE_KEY] = connection
            complete = False
            try:
                await self.app(scope, connection.receive_websocket, connection.send_websocket)
                complete = not connection.failed
            finally:
                connection.finish(complete=complete)
                connection._send = _gone  # As for HTTP, above.
                connection._receive = _nothing_more
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


# The call forms with `when=` or `key=`. PEP 612 cannot type keyword-only
# parameters beside a ParamSpec's *args and **kwargs, so these check up to
# four positional arguments against the function's first parameters
# (Concatenate[..., ...]), and leave its keyword arguments unchecked. Without
# `when=` and `key=`, the last overload checks every argument.
@overload
def after_this_response(*, when: When = "always", key: str | None = None) -> Callable[[F], F]: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # `key` is reserved, as `when` is.
    func: Callable[..., Any], /, *, key: str, when: When = "always", **kwargs: Any
) -> bool: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # `key` is reserved, as `when` is.
    func: Callable[Concatenate[A1, ...], Any],
    a1: A1,
    /,
    *,
    key: str,
    when: When = "always",
    **kwargs: Any,
) -> bool: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # `key` is reserved, as `when` is.
    func: Callable[Concatenate[A1, A2, ...], Any],
    a1: A1,
    a2: A2,
    /,
    *,
    key: str,
    when: When = "always",
    **kwargs: Any,
) -> bool: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # `key` is reserved, as `when` is.
    func: Callable[Concatenate[A1, A2, A3, ...], Any],
    a1: A1,
    a2: A2,
    a3: A3,
    /,
    *,
    key: str,
    when: When = "always",
    **kwargs: Any,
) -> bool: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # `key` is reserved, as `when` is.
    func: Callable[Concatenate[A1, A2, A3, A4, ...], Any],
    a1: A1,
    a2: A2,
    a3: A3,
    a4: A4,
    /,
    *,
    key: str,
    when: When = "always",
    **kwargs: Any,
) -> bool: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # Five positional arguments or more: not checked.
    func: Callable[..., Any],
    a1: Any,
    a2: Any,
    a3: Any,
    a4: Any,
    a5: Any,
    /,
    *args: Any,
    key: str,
    when: When = "always",
    **kwargs: Any,
) -> bool: ...
@overload
def after_this_response(
    func: Callable[..., R], /, *, when: When, **kwargs: Any
) -> Callable[..., R]: ...
@overload
def after_this_response(
    func: Callable[Concatenate[A1, ...], R], a1: A1, /, *, when: When, **kwargs: Any
) -> Callable[..., R]: ...
@overload
def after_this_response(
    func: Callable[Concatenate[A1, A2, ...], R],
    a1: A1,
    a2: A2,
    /,
    *,
    when: When,
    **kwargs: Any,
) -> Callable[..., R]: ...
@overload
def after_this_response(
    func: Callable[Concatenate[A1, A2, A3, ...], R],
    a1: A1,
    a2: A2,
    a3: A3,
    /,
    *,
    when: When,
    **kwargs: Any,
) -> Callable[..., R]: ...
@overload
def after_this_response(
    func: Callable[Concatenate[A1, A2, A3, A4, ...], R],
    a1: A1,
    a2: A2,
    a3: A3,
    a4: A4,
    /,
    *,
    when: When,
    **kwargs: Any,
) -> Callable[..., R]: ...
@overload
def after_this_response(  # Five positional arguments or more: not checked.
    func: Callable[..., R],
    a1: Any,
    a2: Any,
    a3: Any,
    a4: Any,
    a5: Any,
    /,
    *args: Any,
    when: When,
    **kwargs: Any,
) -> Callable[..., R]: ...
@overload
def after_this_response(
    func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
) -> Callable[P, R]: ...
def after_this_response(func: Any = _MISSING, /, *args: Any, **kwargs: Any) -> Any:
    """Run ``func(*args, **kwargs)`` after the response has been sent to the client.

    Use it for slow work the client should not wait for: the welcome e-mail,
    the audit row. It runs on a task the runner owns, once the response is
    complete, in a copy of the request's context, so ``request``,
    ``g``, ``session`` and ``current_app`` still work. The request's teardown
    functions have already run by then, so anything they close (a database
    connection on ``g``) is closed. Plain functions run on a thread::

        @app.post("/signup")
        async def signup() -> tuple[str, int]:
            user = await create_user()
            after_this_response(send_welcome_mail, user.email)
            return "created", 201

        @after_this_response(when="failure")
        async def audit_failure() -> None: ...

    Arguments:
        func: The function to call; ``async def`` functions are awaited.
        when: ``"always"`` (default), ``"success"`` (the response was complete
            and its status is below 400) or ``"failure"`` (anything else).
        key: De-duplicate: if work with this key is already waiting or
            running in this process, this call adds nothing. With a key the
            call returns ``True`` if it scheduled the work, ``False`` if not.
    """
    when: When = "always"
    key = None
    if kwargs:  # Checked only when given: this is on every registration's path.
        when = check_when(kwargs.pop("when", "always"), "after_this_response")
        key = check_key(kwargs.pop("key", None), "after_this_response")
    if func is _MISSING:

        def decorator(decorated: F) -> F:
            defer(decorated, (), {}, when, key)
            return decorated

        return decorator
    scheduled = defer(func, args, kwargs, when, key)
    return func if key is None else scheduled


def defer(
    func: object,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    when: When,
    key: str | None,
    caller: str = "after_this_response",
) -> bool:
    job = Job(func, args, kwargs or NO_KWARGS, is_async(func, caller), when, key)  # type: ignore[arg-type]
    source = current_source()
    if source is None:
        msg = (
            "after_this_response() was called outside a request or websocket, where "
            "there is no response to wait for. Call it from a view or a request hook; "
            "to start work from elsewhere, use deferred.start_soon(func, ...)."
        )
        raise ContextError(msg)
    exchange: Exchange | None = exchange_of(source)
    if exchange is None or exchange.finished:
        raise cannot_add_work(source, exchange is not None, caller)
    exchange.source = source
    app_state = exchange.app_state
    if app_state.admitting:
        app_state.admit(func, caller)
    if key is not None:
        if key in app_state.keys:
            app_state.reap()  # A loop that ended may have left the key behind.
            if key in app_state.keys:
                return False
        app_state.keys.add(key)
    app_state.counters.held += 1  # Counted against MAX_PENDING until the exchange ends.
    batch = exchange.batch
    if batch is None:  # The request's first job: capture its context now.
        exchange.batch = Batch([job], copy_context(), source)
    else:
        batch.jobs.append(job)
    return True
