"""QuartDeferred: wiring, configuration, several apps, app-wide hooks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from quart import current_app, Quart, request

from quart_deferred import (
    after_this_response,
    ContextError,
    Delivery,
    InvalidCallbackError,
    InvalidOptionError,
    NotInitialisedError,
    QuartDeferred,
    Stats,
)

from .conftest import Client, counts, until, wait


def test_config_defaults_are_visible_and_init_arguments_override() -> None:
    """Defaults appear in app.config, and init arguments win over config keys."""
    app = Quart(__name__)
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 7
    QuartDeferred(app, shutdown_timeout=1.5)
    assert app.config["QUART_DEFERRED_MAX_CONCURRENCY"] == 7
    assert app.config["QUART_DEFERRED_TASK_TIMEOUT"] is None
    assert app.config["QUART_DEFERRED_SHUTDOWN_TIMEOUT"] == 1.5


async def test_factory_form_and_asgi_app_wrapping() -> None:
    """init_app binds later; the app stays the Quart app that servers load, and runs the work."""
    deferred = QuartDeferred()
    app = Quart(__name__)
    deferred.init_app(app)
    assert app.extensions["quart_deferred"].extension is deferred
    ran = asyncio.Event()

    @app.get("/")
    async def index() -> str:
        after_this_response(ran.set)
        return "ok"

    response = await app.test_client().get("/")  # Through app(), as a server calls it.
    assert response.status_code == 200
    await wait(ran.wait())


async def test_a_middleware_installed_before_the_extension_stays_in_the_chain() -> None:
    """Wrapping Quart's own asgi_app, the extension calls Quart's HTTP handler directly;
    wrapping anything else, it calls that, so an earlier middleware still sees requests."""
    app = Quart(__name__)
    inner = app.asgi_app
    seen: list[str] = []

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await inner(scope, receive, send)

    app.asgi_app = middleware  # type: ignore[method-assign]
    deferred = QuartDeferred(app)
    ran: list[str] = []

    @app.get("/")
    async def index() -> str:
        after_this_response(ran.append, request.path)
        return "ok"

    response = await app.test_client().get("/")
    await deferred.join(timeout=5)
    assert await response.get_data(as_text=True) == "ok"
    assert seen == ["/"]
    assert ran == ["/"]


def test_initialising_twice_is_an_error() -> None:
    """Binding a second QuartDeferred to the same app is refused."""
    app = Quart(__name__)
    QuartDeferred(app)
    with pytest.raises(RuntimeError, match="already initialised on app"):
        QuartDeferred(app)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("QUART_DEFERRED_MAX_CONCURRENCY", 0, "whole number of 1 or more, got 0"),
        ("QUART_DEFERRED_MAX_CONCURRENCY", "10", "whole number of 1 or more, got '10'"),
        ("QUART_DEFERRED_TASK_TIMEOUT", -1, r"seconds \(0 or more\) or None, got -1"),
        ("QUART_DEFERRED_SHUTDOWN_TIMEOUT", None, r"seconds \(0 or more\), got None"),
        ("QUART_DEFERRED_MAX_PENDING", 0, "whole number of 1 or more, or None, got 0"),
        ("QUART_DEFERRED_THREADS", None, "QUART_DEFERRED_THREADS must be a whole number"),
    ],
)
def test_bad_config_is_a_clear_error(key: str, value: object, match: str) -> None:
    """A bad config value is refused at init with a message naming it."""
    app = Quart(__name__)
    app.config[key] = value
    with pytest.raises(InvalidOptionError, match=match):
        QuartDeferred(app)


def test_zero_shutdown_timeout_warns() -> None:
    """QUART_DEFERRED_SHUTDOWN_TIMEOUT=0 warns that work is cancelled at once."""
    app = Quart(__name__)
    app.config["QUART_DEFERRED_SHUTDOWN_TIMEOUT"] = 0
    with pytest.warns(UserWarning, match="cancelled at once"):
        QuartDeferred(app)


async def test_one_extension_several_apps_keep_their_own_runners() -> None:
    """One extension bound to two apps: each app has its own runner and limits."""
    deferred = QuartDeferred()
    shop, blog = Quart("shop"), Quart("blog")
    blog.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 1
    deferred.init_app(shop)
    deferred.init_app(blog)
    ran: list[str] = []

    for app in (shop, blog):

        @app.get("/")
        async def index() -> str:
            after_this_response(ran.append, request.path)
            return "ok"

    await shop.test_client().get("/")
    await blog.test_client().get("/")
    await deferred.join(timeout=5, app=shop)
    await deferred.join(timeout=5, app=blog)
    assert counts(deferred.stats(shop)) == Stats(scheduled=1, succeeded=1)
    assert counts(deferred.stats(blog)) == Stats(scheduled=1, succeeded=1)
    with pytest.raises(ContextError, match="bound to 2 apps.*Pass app="):
        deferred.stats()
    async with blog.app_context():
        assert deferred.stats().succeeded == 1  # The current app is the one meant.
    with pytest.raises(NotInitialisedError, match="not initialised on app 'other'"):
        deferred.stats(Quart("other"))


async def test_app_wide_hooks_run_after_the_requests_own_work(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """after_response hooks run after the request's own work, with the Delivery of what went out."""
    events: list[str] = []

    @deferred.after_response
    async def with_delivery(delivery: Delivery) -> None:
        events.append(
            f"hook {request.path} {delivery.status_code} {delivery.complete} "
            f"{delivery.headers['Content-Type']}"
        )

    @deferred.after_response(when="failure")
    def on_failure() -> None:
        events.append(f"failure hook {request.path}")

    @app.before_request
    async def short_circuit() -> str | None:
        # Answers before the view: the hooks still get the request's context.
        return "early" if request.path == "/early" else None

    @app.get("/")
    async def index() -> str:
        after_this_response(events.append, "own work")
        return "ok"

    await client.get("/")
    await deferred.join(timeout=5)
    await client.get("/missing")
    await deferred.join(timeout=5)
    await client.get("/early")
    await deferred.join(timeout=5)
    assert events == [
        "own work",
        "hook / 200 True text/html; charset=utf-8",
        "hook /missing 404 True text/html; charset=utf-8",
        "failure hook /missing",
        "hook /early 200 True text/html; charset=utf-8",
    ]


async def test_hook_registered_before_init_app_is_installed() -> None:
    """An app-wide hook registered before init_app still runs after each request."""
    deferred = QuartDeferred()
    calls: list[str] = []

    @deferred.after_response
    def hook() -> None:
        calls.append("hook")

    app = Quart(__name__)
    deferred.init_app(app)

    @app.get("/")
    async def index() -> str:
        return "ok"

    await app.test_client().get("/")
    await deferred.join(timeout=5)
    assert calls == ["hook"]


def test_hook_with_too_many_parameters_is_refused() -> None:
    """A hook that takes more than one Delivery parameter is refused at registration."""
    deferred = QuartDeferred()
    with pytest.raises(InvalidCallbackError, match="no argument, nor with one Delivery"):

        @deferred.after_response
        def hook(first: object, second: object) -> None:
            pass


async def test_start_soon_needs_a_running_loop(deferred: QuartDeferred) -> None:
    """start_soon from a thread without an event loop raises ContextError saying where to call
    it."""

    def job() -> None:
        pass

    def from_thread() -> None:
        deferred.start_soon(job)

    with pytest.raises(ContextError, match="no event loop running in this thread"):
        await asyncio.to_thread(from_thread)


async def test_an_init_argument_wins_over_its_config_key_set_later() -> None:
    """QuartDeferred(app, max_concurrency=1), then app.config[...] = 50: one runs at a time."""
    app = Quart(__name__)
    deferred = QuartDeferred(app, max_concurrency=1)
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 50
    release = asyncio.Event()

    @app.get("/")
    async def index() -> str:
        after_this_response(release.wait)
        return "ok"

    client = app.test_client()
    for _ in range(3):
        await client.get("/")
    await wait(until(lambda: deferred.stats().running == 1))
    assert deferred.stats().waiting == 2
    release.set()
    await wait(deferred.join())


async def test_join_outside_an_app_context_waits_for_every_bound_app() -> None:
    """join() outside an app context waits for the work of every bound app."""
    deferred = QuartDeferred()
    apps = [Quart("first"), Quart("second")]
    done: list[str] = []
    for app in apps:
        deferred.init_app(app)

        @app.get("/")
        async def index() -> str:
            after_this_response(done.append, current_app.name)
            return "ok"

    for app in apps:
        await app.test_client().get("/")
    await wait(deferred.join(timeout=5))
    assert sorted(done) == ["first", "second"]
    with pytest.raises(ContextError, match="bound to 2 apps"):
        deferred.stats()  # Stats stay per app: which one is meant must be said.
