"""The apps the benchmarks compare: the same tiny view, with and without extra work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
import os
import tempfile
from typing import Any

import quart
from quart import Quart, request
from quart.typing import ResponseTypes

from quart_deferred import after_this_request, after_this_response, QuartDeferred

from .asgi import ASGIApp

Drain = Callable[[], Awaitable[None]]


async def noop(*args: Any) -> None:
    pass


def sync_noop() -> None:
    pass


def _app(name: str) -> Quart:
    app = Quart(name)
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 100
    return app


def bare() -> tuple[Quart, Drain]:
    app = _app("bare")

    @app.get("/")
    async def index() -> str:
        return "ok"

    return app, noop


def sync_view() -> tuple[Quart, Drain]:
    """Bare Quart with a plain `def` view: one thread hop through Quart's run_sync."""
    app = _app("sync_view")

    @app.get("/")
    def index() -> str:
        return "ok"

    return app, noop


def background_task() -> tuple[Quart, Drain]:
    """Quart's own add_background_task(noop), waited for at the end."""
    app = _app("background_task")

    @app.get("/")
    async def index() -> str:
        app.add_background_task(noop)
        return "ok"

    async def drain() -> None:
        while app.background_tasks:
            await next(iter(app.background_tasks))

    return app, drain


def native_after_this_request() -> tuple[Quart, Drain]:
    app = _app("native_after_this_request")

    @app.get("/")
    async def index() -> str:
        quart.after_this_request(noop_callback)
        return "ok"

    return app, noop


async def noop_callback(response: ResponseTypes) -> ResponseTypes:
    return response


def _deferred(name: str) -> tuple[Quart, Drain]:
    """An app with our extension installed, and a drain that joins its work."""
    app = _app(name)
    extension = QuartDeferred(app)

    async def drain() -> None:
        await extension.join()

    return app, drain


# Each view calls our function itself, as the native variants call Quart's:
# an extra call in between would be counted against us.


def deferred_unused() -> tuple[Quart, Drain]:
    app, drain = _deferred("deferred_unused")

    @app.get("/")
    async def index() -> str:
        return "ok"

    return app, drain


def deferred_after_this_request() -> tuple[Quart, Drain]:
    app, drain = _deferred("deferred_after_this_request")

    @app.get("/")
    async def index() -> str:
        after_this_request(noop_callback)
        return "ok"

    return app, drain


def deferred_after_this_response() -> tuple[Quart, Drain]:
    app, drain = _deferred("deferred_after_this_response")

    @app.get("/")
    async def index() -> str:
        after_this_response(noop)
        return "ok"

    return app, drain


async def task_noop(value: str) -> None:
    """A task: registered per app with ``@deferred.task`` in the variants below."""


def _task_app(name: str, journal: str | None) -> tuple[Quart, Drain]:
    app = _app(name)
    extension = QuartDeferred(app, journal=journal)
    task = extension.task(task_noop)

    @app.get("/")
    async def index() -> str:
        after_this_response(task, "1")
        return "ok"

    async def drain() -> None:
        await extension.join()

    return app, drain


def deferred_task() -> tuple[Quart, Drain]:
    """One ``@deferred.task`` per request, without a journal: in memory, with its retries."""
    return _task_app("deferred_task", None)


def deferred_durable_task() -> tuple[Quart, Drain]:
    """One durable task per request: its record written before the final send."""
    path = os.path.join(tempfile.mkdtemp(prefix="quart-deferred-bench-"), "journal.sqlite3")
    return _task_app("deferred_durable_task", f"sqlite:///{path}")


def deferred_sync_after_this_response() -> tuple[Quart, Drain]:
    app, drain = _deferred("deferred_sync_after_this_response")

    @app.get("/")
    async def index() -> str:
        after_this_response(sync_noop)
        return "ok"

    return app, drain


# Starlette, for reference: its BackgroundTask runs inline, inside the ASGI call,
# after the final send. Imported here, so that the rest runs without Starlette.


def starlette_bare() -> tuple[ASGIApp, Drain]:
    return _starlette(background=False), noop


def starlette_background_task() -> tuple[ASGIApp, Drain]:
    return _starlette(background=True), noop  # The call returns once the task has run.


def _starlette(*, background: bool) -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(noop) if background else None)

    return Starlette(routes=[Route("/", index)])


# Module-level apps for the served benchmark (hypercorn imports them by name). Both
# views read the request id, so the only difference is the post-response job.

served_bare = Quart("served_bare")


@served_bare.get("/")
async def _served_bare_index() -> str:
    request.args.get("id")
    return "ok"


served_deferred = Quart("served_deferred")
served_deferred.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 100
_served_extension = QuartDeferred(served_deferred)
_ran: dict[str, int] = {}


async def _record(request_id: str) -> None:
    _ran[request_id] = _ran.get(request_id, 0) + 1


@served_deferred.get("/")
async def _served_index() -> str:
    request_id = request.args.get("id")
    if request_id is None:
        after_this_response(noop)
    else:
        after_this_response(_record, request_id)
    return "ok"


@served_deferred.get("/_check")
async def _served_check() -> dict[str, Any]:
    await _served_extension.join()
    counts = list(_ran.values())
    stats = _served_extension.stats()
    return {
        "ids": len(counts),
        "ran_more_than_once": sum(1 for count in counts if count > 1),
        "scheduled": stats.scheduled,
        "succeeded": stats.succeeded,
    }
