"""What QuartDeferred keeps and does per app: config, counters, keys, the runner of each loop.

The counters and de-duplication keys are the app's, not one runner's: they
outlive the event loop that ran the work (a test per loop, the app served
again on a new loop). This module only creates them: the runner of the
running loop is their one writer (its ``Admission`` and its ``Ledger``).
A runner whose loop has ended is found out when the app next needs one, and
its unfinished work is logged by name as lost, so that its counts, its keys
and ``QUART_DEFERRED_MAX_PENDING`` start clean.
"""

from __future__ import annotations

import asyncio
from collections import ChainMap
from collections.abc import AsyncGenerator, Collection, Mapping
from contextvars import copy_context
from dataclasses import replace
import logging
import math
from typing import Any, Protocol

import anyio
from quart import Quart

from ._compat import app_context, current_source, from_test_client
from ._config import optional_seconds, optional_whole_number, seconds, whole_number
from ._drain import lose_everything, shutdown
from ._durable import open_journal, Runtime
from .exceptions import ContextError, InvalidOptionError, NotInitialisedError
from .jobs import Batch, Hook, Job, log_fields
from .metrics import Counters, JournalCounts, Keys, Stats
from .runner import TaskRunner
from .tasks import Task

logger = logging.getLogger("quart_deferred")


class Owner(Protocol):
    """What an app's state reads of the QuartDeferred it belongs to."""

    overrides: dict[str, Any]  # Init arguments, as config keys: they win over app.config.
    hooks: tuple[Hook, ...]  # App-wide @deferred.after_response functions, added to later.
    queues: tuple[Any, ...]  # The queues.QueueAdapter instances added with add_queue().
    tasks: dict[str, Task[..., Any]]  # The functions registered with @deferred.task, by name.


class AppState:
    """What QuartDeferred keeps per app, in ``app.extensions["quart_deferred"]``, and the work
    behind its calls (``start_soon``, ``stats``) once it has checked them."""

    def __init__(self, extension: Owner, app: Quart) -> None:
        self.extension = extension
        self.app = app
        self.counters = Counters()
        self.keys = Keys()
        # Whether the server sent lifespan.startup, or we said once that it did not.
        self.lifespan_known = False
        self._runner: TaskRunner | None = None
        self._durable: Runtime | None = None

    @property
    def config(self) -> Mapping[str, Any]:
        """The app's config with the extension's init arguments on top: they always win."""
        return ChainMap(self.extension.overrides, self.app.config)

    def runner(self) -> TaskRunner:
        """Return the runner of the running loop, starting one when first needed."""
        runner = self._runner
        if runner is None or runner.loop is not asyncio.get_running_loop():
            runner = self.open_runner()
        return runner

    def durable(self) -> Runtime:
        """Return what runs the app's tasks, with its journal if one is configured."""
        durable = self._durable
        if durable is None:
            config = self.config
            url = config["QUART_DEFERRED_JOURNAL"]
            durable = self._durable = Runtime(
                self.app,
                self.extension.tasks,
                None if url is None else open_journal(url, config["QUART_DEFERRED_JOURNAL_SYNC"]),
                seconds(config, "QUART_DEFERRED_LEASE"),
                self.runner,
                lambda: self.config,
            )
        return durable

    def open_runner(self) -> TaskRunner:
        self.reap()
        old = self._runner
        if old is not None and not old.closed and not old.idle:
            logger.warning(
                "A new event loop is serving app %r while work of another loop that is still "
                "running is unfinished; that work stays with its own loop.",
                self.app.name,
                extra=log_fields(None, None),
            )
        config = self.config
        self._runner = TaskRunner(
            self.app,
            self.counters,
            self.keys,
            max_concurrency=whole_number(config, "QUART_DEFERRED_MAX_CONCURRENCY"),
            task_timeout=optional_seconds(config, "QUART_DEFERRED_TASK_TIMEOUT"),
            max_pending=optional_whole_number(config, "QUART_DEFERRED_MAX_PENDING"),
            threads=whole_number(config, "QUART_DEFERRED_THREADS"),
        )
        return self._runner

    def reap(self) -> None:
        """Account for the work of a runner whose event loop has ended."""
        old = self._runner
        if old is None or old.closed:
            return
        if old.loop.is_closed() or not old.loop.is_running():
            lose_everything(old, "its event loop ended")

    def start_soon(
        self, work: Job | Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Start *work* outside the response cycle: ``deferred.start_soon``, checked by it.

        *work* is the job of a plain callable, or a task to call with *args*
        and *kwargs*.
        """
        app_ctx = app_context()
        fresh = app_ctx is None or app_ctx.app is not self.app
        runner = self.runner()
        durable = None
        if isinstance(work, Job):
            job = work
            func: object = work.func
        else:  # A task: its arguments are encoded now, or refused here.
            durable = self.durable()
            job = durable.job_for(work, args, kwargs, "always", None, "start_soon", "start_soon")
            func = work
        runner.admission.admit(func, "start_soon")  # Refused work is not written either.
        if durable is not None and durable.journal is not None:
            # Not promised to a client: written without waiting.
            durable.write_later([job.func])  # type: ignore[list-item]  # A TaskCall.
        runner.submit(Batch([job], copy_context(), current_source(), fresh))

    def stats(self) -> Stats:
        """A snapshot of the app's counters; with a journal, its counts read from the file now."""
        stats = self.counters.snapshot()
        journal = self.durable().journal
        if journal is None:
            return stats
        counts = journal.counts()
        return replace(
            stats, journal=JournalCounts(counts["waiting"], counts["dead"], counts["done"])
        )

    def without_lifespan(self, scope: Mapping[str, Any]) -> None:
        """Say once that the app is served without the ASGI lifespan, and what that costs."""
        if from_test_client(scope):  # app.test_client() without test_app(): no server.
            return
        self.lifespan_known = True
        logger.warning(
            "App %r is served without the ASGI lifespan (uvicorn --lifespan off, or a server "
            "without lifespan support such as daphne), so Quart-Deferred cannot drain deferred "
            "work at shutdown: work still waiting or running when the server stops is "
            "cancelled with the event loop, and logged then. Serve it with the lifespan on "
            "(uvicorn --lifespan on; hypercorn and granian have it on by default).",
            self.app.name,
            extra=log_fields(None, None),
        )

    @property
    def current_runner(self) -> TaskRunner | None:
        """The runner of the running loop if there is one, without starting one."""
        runner = self._runner
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return runner if runner is not None and runner.loop is loop else None

    @property
    def any_runner(self) -> TaskRunner | None:
        """The latest runner, whatever its loop."""
        return self._runner

    async def serve(self) -> AsyncGenerator[None, None]:
        """Tie the runner to the app's serving lifetime (a ``while_serving`` function).

        The drain normally runs earlier, as soon as the server announces its
        shutdown (see ``PostResponseMiddleware``); this end is the fallback for
        an app shut down without the ASGI lifespan.
        """
        runner = self.current_runner
        if runner is None or runner.closed:  # Keep one a before_serving function started.
            self.open_runner()
        await self.durable().start()  # Before the first request: jobs left by earlier processes.
        yield
        await self.drain()

    async def drain(self) -> None:
        """Finish or cancel the work of this loop's runner, once."""
        runner = self.current_runner
        if runner is not None and not runner.closed:
            await shutdown(runner, seconds(self.config, "QUART_DEFERRED_SHUTDOWN_TIMEOUT"))
            if self._durable is not None:
                await self._durable.close()


def state_of(owner: Owner, app: Quart | None, bound: Collection[Quart]) -> AppState:
    """The state *owner* keeps for *app*: by default the current app's, or the one bound app's."""
    if app is not None:
        check_app(app, "app=")
    else:
        app_ctx = app_context()
        if app_ctx is not None:
            app = app_ctx.app
        elif len(bound) == 1:
            app = next(iter(bound))
        else:
            msg = (
                f"This QuartDeferred is bound to {len(bound)} apps and no app "
                "context is active, so it cannot tell which app you mean. Pass "
                "app=..., or call it inside an app context."
            )
            raise ContextError(msg)
    state = app.extensions.get("quart_deferred")
    if not isinstance(state, AppState) or state.extension is not owner:
        raise NotInitialisedError.for_app(app.name)
    return state


def check_app(app: object, where: str) -> None:
    if not isinstance(app, Quart):
        msg = (
            f"{where} got {app!r} of type {type(app).__name__}, which is not a Quart app. "
            "Pass the Quart app itself (not a blueprint, nor app.asgi_app)."
        )
        raise InvalidOptionError(msg)


async def join(states: list[AppState], timeout: float | None) -> None:  # noqa: ASYNC109
    """Wait until the runners of *states* are idle: ``deferred.join()``."""
    runners = [state.current_runner for state in states]
    for runner in runners:
        if runner is not None and runner.owns_current_task():
            msg = (
                "deferred.join() was awaited from inside deferred work, which would wait "
                "for itself forever. Await the other work directly, or start it with "
                "deferred.start_soon() and let it finish on its own."
            )
            raise ContextError(msg)
    with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
        for runner in runners:
            if runner is not None:
                await runner.wait_idle()
    if scope.cancelled_caught:
        waiting = sum(state.counters.waiting for state in states)
        running = sum(state.counters.running for state in states)
        msg = (
            f"deferred.join() gave up after {timeout}s with {waiting} jobs "
            f"waiting and {running} running."
        )
        raise TimeoutError(msg)
