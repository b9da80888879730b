"""The Quart extension: wiring, configuration and the app-wide API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable
from contextvars import copy_context
from dataclasses import dataclass
import inspect
import logging
from typing import Any, overload, ParamSpec, TypeVar
import warnings
import weakref

import anyio
from quart import Quart
from quart.globals import _cv_app

from ._compat import current_source
from .exceptions import ContextError, InvalidCallbackError, InvalidOptionError, NotInitialisedError
from .jobs import _is_async, Batch, callable_name, check_when, Job, log_fields, make_job, When
from .post_response import Delivery, Exchange, PostResponseMiddleware, RESPONSE_ATTRIBUTE
from .queues import QueueAdapter
from .runner import Counters, Stats, TaskRunner
from .state import exchange_of, on_event_loop

P = ParamSpec("P")
HookT = TypeVar("HookT", bound=Callable[..., Any])

logger = logging.getLogger("quart_deferred")

DEFAULTS: dict[str, Any] = {
    "QUART_DEFERRED_MAX_CONCURRENCY": 100,  # Jobs running at once; more wait in FIFO order.
    "QUART_DEFERRED_TASK_TIMEOUT": None,  # Seconds per job; None for no limit.
    "QUART_DEFERRED_SHUTDOWN_TIMEOUT": 5.0,  # Seconds to drain at shutdown.
    "QUART_DEFERRED_MAX_PENDING": None,  # Waiting jobs before new ones are refused; None: no limit.
    "QUART_DEFERRED_THREADS": 8,  # Threads for plain def jobs, apart from Quart's run_sync.
    "QUART_DEFERRED_ENQUEUE_RETRIES": 3,  # Retries of a failed enqueue_after_response send.
}


@dataclass(frozen=True, slots=True)
class Hook:
    """An app-wide post-response function registered with ``@deferred.after_response``."""

    func: Callable[..., Any]
    is_async: bool
    takes_delivery: bool
    when: When

    def job_for(self, delivery: Delivery) -> Job:
        args = (delivery,) if self.takes_delivery else ()
        return Job(self.func, args, {}, self.is_async, self.when)


class AppState:
    """What QuartDeferred keeps per app, in ``app.extensions["quart_deferred"]``."""

    def __init__(self, extension: QuartDeferred, app: Quart) -> None:
        self.extension = extension
        self.app = app
        self.counters = Counters()
        self.keys: set[str] = set()  # De-duplication keys of work waiting or running.
        self.capturing = False
        # Whether the runner has a QUART_DEFERRED_MAX_PENDING to admit work against:
        # checked on every registration, so admit() is called only when it matters.
        self.admitting = False
        self._runner: TaskRunner | None = None

    def runner(self) -> TaskRunner:
        """Return the runner of the running loop, starting one when first needed."""
        runner = self._runner
        if runner is None or runner.loop is not asyncio.get_running_loop():
            runner = self.open_runner()
        return runner

    def open_runner(self) -> TaskRunner:
        old = self._runner
        if old is not None and not old.closed and not old.idle:
            logger.warning(
                "A new event loop is serving app %r while work from the previous loop "
                "is unfinished; that work is lost with its loop.",
                self.app.name,
                extra=log_fields(None, None),
            )
        config = self.app.config
        self._runner = TaskRunner(
            self.app,
            self.counters,
            self.keys,
            max_concurrency=_whole_number(config, "QUART_DEFERRED_MAX_CONCURRENCY"),
            task_timeout=_optional_seconds(config, "QUART_DEFERRED_TASK_TIMEOUT"),
            max_pending=_optional_whole_number(config, "QUART_DEFERRED_MAX_PENDING"),
            threads=_whole_number(config, "QUART_DEFERRED_THREADS"),
        )
        self.admitting = self._runner.max_pending is not None
        return self._runner

    def admit(self, func: object, caller: str) -> None:
        """Refuse new work past ``max_pending``; callable from a plain view's thread too."""
        runner = self._runner  # Any loop's: the counters are the app's, not the loop's.
        if runner is not None and runner.max_pending is not None:
            runner.admit(func, caller)

    @property
    def current_runner(self) -> TaskRunner | None:
        """The runner of the running loop if there is one, without starting one."""
        runner = self._runner
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return runner if runner is not None and runner.loop is loop else None

    async def serve(self) -> AsyncGenerator[None, None]:
        """Tie the runner to the app's serving lifetime (a ``while_serving`` function).

        The drain normally runs earlier, as soon as the server announces its
        shutdown (see ``PostResponseMiddleware``); this end is the fallback for
        an app shut down without the ASGI lifespan.
        """
        runner = self.current_runner
        if runner is None or runner.closed:  # Keep one a before_serving function started.
            self.open_runner()
        yield
        await self.drain()

    async def drain(self) -> None:
        """Finish or cancel the work of this loop's runner, once."""
        runner = self.current_runner
        if runner is not None and not runner.closed:
            await runner.shutdown(_seconds(self.app.config, "QUART_DEFERRED_SHUTDOWN_TIMEOUT"))

    async def capture_context(self) -> None:
        """Capture the request's context for app-wide hooks (a ``before_request`` function)."""
        source = current_source()
        if source is not None:
            exchange = exchange_of(source)
            if exchange is not None and not exchange.finished:
                exchange.batch_for(source)


class QuartDeferred:
    """Deferred request callbacks and supervised post-response work for Quart apps.

    ::

        app = Quart(__name__)
        deferred = QuartDeferred(app)

        # or, with an app factory:
        deferred = QuartDeferred()
        deferred.init_app(app)

    One extension object may be bound to several apps; each app has its own
    runner, configured from its own ``app.config``.

    Arguments:
        app: The app to bind now, or ``None`` to bind later with ``init_app``.
        max_concurrency: Overrides ``QUART_DEFERRED_MAX_CONCURRENCY``.
        task_timeout: Overrides ``QUART_DEFERRED_TASK_TIMEOUT``.
        shutdown_timeout: Overrides ``QUART_DEFERRED_SHUTDOWN_TIMEOUT``.
        max_pending: Overrides ``QUART_DEFERRED_MAX_PENDING``.
        threads: Overrides ``QUART_DEFERRED_THREADS``.
        enqueue_retries: Overrides ``QUART_DEFERRED_ENQUEUE_RETRIES``.
        queues: Adapters for task queues besides Celery and taskiq, for
            ``enqueue_after_response``; see ``QueueAdapter``.
    """

    def __init__(
        self,
        app: Quart | None = None,
        *,
        max_concurrency: int | None = None,
        task_timeout: float | None = None,
        shutdown_timeout: float | None = None,
        max_pending: int | None = None,
        threads: int | None = None,
        enqueue_retries: int | None = None,
        queues: Iterable[QueueAdapter] = (),
    ) -> None:
        self.queues: tuple[QueueAdapter, ...] = ()
        for adapter in queues:
            self.add_queue(adapter)
        self.overrides = {
            key: value
            for key, value in (
                ("QUART_DEFERRED_MAX_CONCURRENCY", max_concurrency),
                ("QUART_DEFERRED_TASK_TIMEOUT", task_timeout),
                ("QUART_DEFERRED_SHUTDOWN_TIMEOUT", shutdown_timeout),
                ("QUART_DEFERRED_MAX_PENDING", max_pending),
                ("QUART_DEFERRED_THREADS", threads),
                ("QUART_DEFERRED_ENQUEUE_RETRIES", enqueue_retries),
            )
            if value is not None
        }
        self.hooks: tuple[Hook, ...] = ()
        self._apps: weakref.WeakSet[Quart] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        """Bind the extension to *app*: config defaults, hooks, ASGI layer and lifespan."""
        if "quart_deferred" in app.extensions:
            msg = (
                f"QuartDeferred is already initialised on app {app.name!r}. Call "
                "QuartDeferred(app) or deferred.init_app(app) once per app."
            )
            raise ContextError(msg)
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        app.config.update(self.overrides)
        _whole_number(app.config, "QUART_DEFERRED_MAX_CONCURRENCY")
        _optional_whole_number(app.config, "QUART_DEFERRED_MAX_PENDING")
        _whole_number(app.config, "QUART_DEFERRED_THREADS")
        _whole_number(app.config, "QUART_DEFERRED_ENQUEUE_RETRIES", minimum=0)
        if _optional_seconds(app.config, "QUART_DEFERRED_TASK_TIMEOUT") == 0:
            warnings.warn(
                "QUART_DEFERRED_TASK_TIMEOUT is 0, so every deferred job times out at once. "
                "Use None for no limit.",
                stacklevel=2,
            )
        if _seconds(app.config, "QUART_DEFERRED_SHUTDOWN_TIMEOUT") == 0:
            warnings.warn(
                "QUART_DEFERRED_SHUTDOWN_TIMEOUT is 0, so deferred work still unfinished "
                "at shutdown is cancelled at once, without time to drain.",
                stacklevel=2,
            )

        state = AppState(self, app)
        app.extensions["quart_deferred"] = state
        app.asgi_app = PostResponseMiddleware(app.asgi_app, state)  # type: ignore[method-assign]
        app.while_serving(state.serve)
        self._apps.add(app)
        if self.hooks:
            _install_capture(state)

    # App-wide hooks

    @overload
    def after_response(self, func: HookT, /) -> HookT: ...
    @overload
    def after_response(self, /, *, when: When = "always") -> Callable[[HookT], HookT]: ...
    def after_response(self, func: Any = None, /, *, when: When = "always") -> Any:
        """Register *func* to run after every HTTP response of every bound app.

        It runs after that request's own ``after_this_response`` work, in the
        same context. It takes no argument, or one :class:`Delivery` saying
        what was sent::

            @deferred.after_response
            async def log_delivery(delivery: Delivery) -> None:
                logger.info("%s %s -> %s", request.method, request.path, delivery.status_code)

        Arguments:
            func: The function; ``async def`` functions are awaited.
            when: As for ``after_this_response``: ``"always"`` (default),
                ``"success"`` or ``"failure"``.
        """
        check_when(when, "after_response")

        def register(hook: HookT) -> HookT:
            is_async = _is_async(hook, "after_response")
            self.hooks = (*self.hooks, Hook(hook, is_async, _takes_delivery(hook), when))
            for app in self._apps:
                _install_capture(app.extensions["quart_deferred"])
            return hook

        return register if func is None else register(func)

    def add_queue(self, adapter: QueueAdapter) -> None:
        """Teach ``enqueue_after_response`` another task queue (tried before the built-ins)."""
        if not isinstance(adapter, QueueAdapter):
            msg = (
                f"add_queue() got {adapter!r}, which lacks the QueueAdapter methods "
                "accepts(task), task_name(task) and send(task, args, kwargs)."
            )
            raise InvalidCallbackError(msg)
        self.queues = (*self.queues, adapter)

    # Work outside the response cycle

    def start_soon(self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Start ``func(*args, **kwargs)`` now, supervised by the runner.

        Use it for work that need not wait for a response (the seed recipe's
        ``Thread(target=do_work)``). It shares the runner's limits, timeouts,
        error reports and shutdown drain. Inside a request it runs in a copy
        of the request's context; elsewhere in a fresh app context.

        Arguments:
            func: The function to call; ``async def`` functions are awaited.
        """
        job = make_job(func, args, kwargs, "always", "start_soon")
        if not on_event_loop():
            msg = (
                "deferred.start_soon() was called with no event loop running in this "
                "thread. Call it from async code on the app's loop (a view, a hook or "
                "a before_serving function)."
            )
            raise ContextError(msg)
        state = self._state(None)
        app_ctx = _cv_app.get(None)
        fresh = app_ctx is None or app_ctx.app is not state.app
        runner = state.runner()
        runner.admit(func, "start_soon")
        runner.submit(Batch([job], copy_context(), current_source(), fresh))

    # Introspection

    async def join(self, timeout: float | None = None, *, app: Quart | None = None) -> None:  # noqa: ASYNC109
        """Wait until no deferred work is waiting or running, including work added meanwhile.

        Also waits for a request whose final body is being sent right now.

        Arguments:
            timeout: Seconds to wait at most; then the built-in ``TimeoutError``.
            app: Which app's work; defaults to the current app, or the only bound one.
        """
        runner = self._state(app).current_runner
        if runner is None:
            return
        if timeout is None:
            await runner.wait_idle()
            return
        with anyio.move_on_after(timeout) as scope:
            await runner.wait_idle()
        if scope.cancelled_caught:
            stats = self.stats(app=runner.app)
            msg = (
                f"deferred.join() gave up after {timeout}s with {stats.waiting} jobs "
                f"waiting and {stats.running} running."
            )
            raise TimeoutError(msg)

    async def wait_for(self, response: object, timeout: float | None = 5.0) -> list[BaseException]:  # noqa: ASYNC109
        """Wait for the post-response work of the one request that *response* answered.

        For tests: *response* comes from ``app.test_client()`` while the
        ``quart_deferred`` pytest plugin is active (it is, once the package is
        installed). Work of other requests is not waited for; use ``join()``
        for everything.

        Returns:
            The errors that work raised (timeouts as ``TimeoutError``), or ``[]``.
        """
        exchange: Exchange | None = getattr(response, RESPONSE_ATTRIBUTE, None)
        if exchange is None:
            msg = (
                f"deferred.wait_for() cannot tell which request {response!r} answered. It "
                "takes a response from app.test_client() while the quart_deferred pytest "
                "plugin is active (not disabled with -p no:quart_deferred). For other "
                "clients, use await deferred.join()."
            )
            raise ContextError(msg)
        done: asyncio.Future[list[BaseException]] | None = getattr(exchange, "work_done", None)
        if done is None:  # The request left no post-response work.
            return []
        with anyio.move_on_after(timeout):
            return list(await asyncio.shield(done))
        msg = f"deferred.wait_for() gave up after {timeout}s; the work is still going."
        raise TimeoutError(msg)

    def stats(self, app: Quart | None = None) -> Stats:
        """Return a snapshot of the counters of *app* (default: current or only app)."""
        return self._state(app).counters.snapshot()

    def _state(self, app: Quart | None) -> AppState:
        if app is None:
            app_ctx = _cv_app.get(None)
            if app_ctx is not None:
                app = app_ctx.app
            elif len(self._apps) == 1:
                app = next(iter(self._apps))
            else:
                msg = (
                    f"This QuartDeferred is bound to {len(self._apps)} apps and no app "
                    "context is active, so it cannot tell which app you mean. Pass "
                    "app=..., or call it inside an app context."
                )
                raise ContextError(msg)
        state = app.extensions.get("quart_deferred")
        if not isinstance(state, AppState) or state.extension is not self:
            raise NotInitialisedError.for_app(app.name)
        return state


def _install_capture(state: AppState) -> None:
    # First among the app's before_request functions, so a function that
    # answers early cannot leave the hooks without the request's context.
    if not state.capturing:
        state.app.before_request_funcs.setdefault(None, []).insert(0, state.capture_context)
        state.capturing = True


def _takes_delivery(func: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # Some builtins have no signature; call them bare.
        return False
    for args in ((None,), ()):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return bool(args)
    msg = (
        f"The after_response hook {callable_name(func)} cannot be called with no "
        "argument, nor with one Delivery. Give it no parameters, or one."
    )
    raise InvalidCallbackError(msg)


def _whole_number(config: Any, key: str, minimum: int = 1) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"{key} must be a whole number of {minimum} or more, got {value!r}."
        raise InvalidOptionError(msg)
    return value


def _optional_whole_number(config: Any, key: str) -> int | None:
    if config[key] is None:
        return None
    try:
        return _whole_number(config, key)
    except InvalidOptionError:
        msg = f"{key} must be a whole number of 1 or more, or None, got {config[key]!r}."
        raise InvalidOptionError(msg) from None


def _seconds(config: Any, key: str) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        msg = f"{key} must be a number of seconds (0 or more), got {value!r}."
        raise InvalidOptionError(msg)
    return float(value)


def _optional_seconds(config: Any, key: str) -> float | None:
    if config[key] is None:
        return None
    try:
        return _seconds(config, key)
    except InvalidOptionError:
        msg = f"{key} must be a number of seconds (0 or more) or None, got {config[key]!r}."
        raise InvalidOptionError(msg) from None
