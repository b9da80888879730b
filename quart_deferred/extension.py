"""The Quart extension: wiring, configuration and the app-wide API."""

from __future__ import annotations

from collections.abc import Callable, Iterable
import logging
from typing import Any, overload, ParamSpec, TypeVar
import weakref

from quart import Quart
from quart.signals import got_websocket_exception

from ._asgi import PostResponseMiddleware
from ._cli import cli
from ._compat import app_context
from ._config import configure
from ._durable import open_journal
from ._exchange import capture_context, websocket_failed
from ._outbox import OUTBOX
from ._request import on_event_loop
from ._test_client import work_of
from .adapters import QueueAdapter
from .app_state import AppState, check_app, join, state_of
from .exceptions import ContextError, InvalidCallbackError
from .jobs import check_when, Hook, is_async, Job, When
from .metrics import Stats
from .tasks import JSON, register_task, Serializer, Task

P = ParamSpec("P")
R = TypeVar("R")
HookT = TypeVar("HookT", bound=Callable[..., Any])

logger = logging.getLogger("quart_deferred")

_MISSING: Any = object()  # No function given: the decorator form.


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
        enqueue_timeout: Overrides ``QUART_DEFERRED_ENQUEUE_TIMEOUT``.
        enqueue_max_age: Overrides ``QUART_DEFERRED_ENQUEUE_MAX_AGE``.
        log_arguments: Overrides ``QUART_DEFERRED_LOG_ARGUMENTS``.
        queues: Adapters for task queues besides Celery and taskiq, for
            ``enqueue_after_response``; see ``QueueAdapter``.
        journal: Overrides ``QUART_DEFERRED_JOURNAL``: where tasks are kept
            until they have run (``"sqlite:////var/lib/myapp/deferred.sqlite3"``).
        lease: Overrides ``QUART_DEFERRED_LEASE``.
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
        enqueue_timeout: float | None = None,
        enqueue_max_age: float | None = None,
        log_arguments: bool | Callable[[tuple[Any, ...], dict[str, Any]], str] | None = None,
        queues: Iterable[QueueAdapter] = (),
        journal: str | None = None,
        lease: float | None = None,
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
                ("QUART_DEFERRED_ENQUEUE_TIMEOUT", enqueue_timeout),
                ("QUART_DEFERRED_ENQUEUE_MAX_AGE", enqueue_max_age),
                ("QUART_DEFERRED_LOG_ARGUMENTS", log_arguments),
                ("QUART_DEFERRED_JOURNAL", journal),
                ("QUART_DEFERRED_LEASE", lease),
            )
            if value is not None
        }
        self.hooks: tuple[Hook, ...] = ()
        self.tasks: dict[str, Task[..., Any]] = {OUTBOX.name: OUTBOX}  # Kept sends, too.
        self._apps: weakref.WeakSet[Quart] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        """Bind the extension to *app*: config defaults, hooks, ASGI layer and lifespan."""
        check_app(app, "init_app")
        if any(cls.__module__.startswith("quart_trio") for cls in type(app).__mro__):
            msg = (
                f"QuartDeferred does not support Quart-Trio apps ({type(app).__name__} "
                f"{app.name!r}): its runner is built on asyncio's event loop, tasks and "
                "cancellation, which a Trio app does not have. Use a plain Quart app, or "
                "Trio's own nurseries for background work."
            )
            raise ContextError(msg)
        if "quart_deferred" in app.extensions:
            msg = (
                f"QuartDeferred is already initialised on app {app.name!r}. Call "
                "QuartDeferred(app) or deferred.init_app(app) once per app."
            )
            raise ContextError(msg)
        configure(app.config, self.overrides)
        journal = app.config["QUART_DEFERRED_JOURNAL"]
        if journal is not None:  # Checked here; opened at the start.
            open_journal(journal, app.config["QUART_DEFERRED_JOURNAL_SYNC"])
        state = AppState(self, app)
        app.extensions["quart_deferred"] = state
        app.asgi_app = PostResponseMiddleware(app.asgi_app, state)  # type: ignore[method-assign]
        app.while_serving(state.serve)
        app.cli.add_command(cli)  # quart deferred list | retry | purge
        got_websocket_exception.connect(websocket_failed, app, weak=False)
        self._apps.add(app)
        if self.hooks:
            _install_capture(app)

    # App-wide hooks

    @overload
    def after_response(self, func: HookT, /) -> HookT: ...
    @overload
    def after_response(self, /, *, when: When = "always") -> Callable[[HookT], HookT]: ...
    def after_response(self, func: Any = _MISSING, /, *, when: When = "always") -> Any:
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
            self.hooks = (*self.hooks, Hook.of(hook, when))
            for app in self._apps:
                _install_capture(app)
            return hook

        return register if func is _MISSING else register(func)

    # Tasks

    @overload
    def task(self, func: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        retries: int = 3,
        retry_delay: float = 1.0,
        max_delay: float = 300.0,
        serializer: Serializer = JSON,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...
    def task(
        self,
        func: Any = _MISSING,
        /,
        *,
        name: str | None = None,
        retries: int = 3,
        retry_delay: float = 1.0,
        max_delay: float = 300.0,
        serializer: Serializer = JSON,
    ) -> Any:
        """Register a module-level function as a task: journaled, retried, run at least once.

        ::

            @deferred.task(retries=5)
            async def send_welcome_mail(address: str) -> None: ...

            after_this_response(send_welcome_mail, user.email, when="success")

        With a journal (``QUART_DEFERRED_JOURNAL``), the call is on disk before
        the client has a complete response and runs at least once, whatever
        happens to the process; without one it runs in memory, with its
        retries. Either way it runs in a fresh app context, without
        ``request``, ``g`` or ``session``, and gets its arguments back from the
        serializer (JSON by default).

        Arguments:
            name: The name the journal keeps it under; defaults to
                ``module.qualname``. Renaming a task strands its waiting jobs.
            retries: Attempts after the first, with exponential backoff and jitter.
            retry_delay: Seconds before the first retry; doubled for each next one.
            max_delay: The most seconds between two attempts.
            serializer: An object with ``dumps`` and ``loads``, as ``json``.
        """

        def register(decorated: Callable[P, R]) -> Task[P, R]:
            return register_task(
                self.tasks, decorated, name, retries, retry_delay, max_delay, serializer
            )

        return register if func is _MISSING else register(func)

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
        work = (
            func
            if isinstance(func, Task)
            else Job(func, args, kwargs, is_async(func, "start_soon"))
        )
        if not on_event_loop():
            msg = (
                "deferred.start_soon() was called with no event loop running in this "
                "thread. Call it from async code on the app's loop (a view, a hook or "
                "a before_serving function)."
            )
            raise ContextError(msg)
        self._state(None).start_soon(work, args, kwargs)

    # Introspection

    async def join(self, timeout: float | None = None, *, app: Quart | None = None) -> None:
        """Wait until no deferred work is waiting or running, including work added meanwhile.

        Also waits for a request whose final body is being sent right now.

        Arguments:
            timeout: Seconds to wait at most; then the built-in ``TimeoutError``.
            app: Which app's work; defaults to the current app, or the only bound one.
        """
        if app is None and app_context() is None:
            states = [self._state(bound) for bound in list(self._apps)]
        else:
            states = [self._state(app)]
        await join(states, timeout)

    async def wait_for(self, response: object, timeout: float | None = 5.0) -> list[BaseException]:
        """Wait for the post-response work of the one request that *response* answered.

        For tests: *response* comes from ``app.test_client()`` of an app this
        extension is bound to; no pytest plugin is needed. Work of other
        requests is not waited for; use ``join()`` for everything.

        Returns:
            The errors that work raised (timeouts as ``TimeoutError``), or ``[]``.
        """
        return await work_of(response, timeout)

    def stats(self, app: Quart | None = None) -> Stats:
        """Return a snapshot of the counters of *app* (default: current or only app).

        With a journal, ``journal`` holds its counts, read from the file now.
        """
        return self._state(app).stats()

    def _state(self, app: Quart | None) -> AppState:
        return state_of(self, app, self._apps)


def _install_capture(app: Quart) -> None:
    # First among the app's before_request functions, so a function that
    # answers early cannot leave the hooks without the request's context.
    functions = app.before_request_funcs.setdefault(None, [])
    if capture_context not in functions:
        functions.insert(0, capture_context)
