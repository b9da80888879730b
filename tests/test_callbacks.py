"""after_this_request: callbacks kept on g, called with the response before it is sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
import inspect
import logging
import threading
from typing import Any

import pytest
from quart import abort, Blueprint, g, Quart, request, Response, stream_with_context, websocket

from quart_deferred import after_this_request, ContextError, InvalidCallbackError

from .conftest import Client, wait


async def test_seed_recipe_sets_cookie_from_before_request(app: Quart, client: Client) -> None:
    """The Flask recipe: a before_request remembers the language in a cookie."""

    @app.before_request
    async def detect_user_language() -> None:
        language = request.cookies.get("user_lang")
        if language is None:
            language = "de"

            @after_this_request
            def remember_language(response: Response) -> None:
                response.set_cookie("user_lang", language)

        g.language = language

    @app.get("/")
    async def index() -> str:
        return f"language={g.language}"

    first = await client.get("/")
    assert first.text == "language=de"
    assert "user_lang=de" in first.headers["Set-Cookie"]

    second = await client.get("/", headers={"Cookie": "user_lang=fr"})
    assert second.text == "language=fr"
    assert "Set-Cookie" not in second.headers


async def test_sync_and_async_callbacks_run_in_order(app: Quart, client: Client) -> None:
    """Async callbacks are awaited, sync ones run on a thread; all in registration order."""
    calls: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()

    @app.get("/")
    async def index() -> str:
        @after_this_request
        async def first(response: Response) -> None:
            calls.append(("first", threading.get_ident() == loop_thread))

        @after_this_request
        def second(response: Response) -> None:
            calls.append(("second", threading.get_ident() == loop_thread))
            response.headers["X-Path"] = request.path  # The request context works here.

        @after_this_request
        async def third(response: Response) -> None:
            calls.append(("third", threading.get_ident() == loop_thread))

        return "ok"

    reply = await client.get("/")
    assert reply.headers["X-Path"] == "/"
    assert calls == [("first", True), ("second", False), ("third", True)]


async def test_returned_response_replaces_and_none_keeps(app: Quart, client: Client) -> None:
    """A returned response replaces the current one for later callbacks and the client."""
    seen: list[str] = []

    @app.get("/")
    async def index() -> str:
        @after_this_request
        async def replace(response: Response) -> Response:
            return Response("replaced", status=202)

        @after_this_request
        def keep(response: Response) -> None:
            seen.append(response.status)
            response.headers["X-Kept"] = "yes"

        return "original"

    reply = await client.get("/")
    assert (reply.status_code, reply.text, reply.headers["X-Kept"]) == (202, "replaced", "yes")
    assert seen == ["202 ACCEPTED"]


async def test_bad_return_type_is_an_error_naming_the_callback(
    app: Quart, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Returning something that is not a response fails the request, naming the callback."""

    @app.get("/")
    async def index() -> str:
        @after_this_request  # type: ignore[type-var]  # Wrong on purpose.
        async def returns_a_number(response: Response) -> int:
            return 42

        return "ok"

    reply = await client.get("/")
    assert reply.status_code == 500
    errors = [r for r in caplog.records if r.exc_info and r.exc_info[0] is InvalidCallbackError]
    assert len(errors) == 1
    message = str(errors[0].exc_info[1])  # type: ignore[index]
    assert "returns_a_number returned 42 of type int" in message
    assert "return None, or return a response object" in message


async def test_a_failing_callback_runs_once_and_later_ones_still_run(
    app: Quart, client: Client
) -> None:
    """Unlike Flask and Quart, a raising callback does not make earlier ones run twice."""
    calls: list[tuple[str, int]] = []

    @app.get("/")
    async def index() -> str:
        @after_this_request
        async def first(response: Response) -> None:
            calls.append(("first", response.status_code))

        @after_this_request
        async def boom(response: Response) -> None:
            calls.append(("boom", response.status_code))
            raise RuntimeError("boom")

        @after_this_request
        async def third(response: Response) -> None:
            calls.append(("third", response.status_code))

        return "ok"

    reply = await client.get("/")
    assert reply.status_code == 500
    # `third` sees the 500 response that Quart made from boom's error.
    assert calls == [("first", 200), ("boom", 200), ("third", 500)]


async def test_callbacks_registered_by_callbacks_run_too(app: Quart, client: Client) -> None:
    """A callback that registers another callback gets it called on the same response."""
    calls: list[str] = []

    @app.get("/")
    async def index() -> str:
        @after_this_request
        async def outer(response: Response) -> None:
            calls.append("outer")

            @after_this_request
            async def inner(response: Response) -> None:
                calls.append("inner")

        return "ok"

    await client.get("/")
    assert calls == ["outer", "inner"]


async def test_works_from_blueprint_hooks_and_error_handlers(app: Quart, client: Client) -> None:
    """Error responses (abort, handled and unhandled errors) pass through the dispatcher."""
    blueprint = Blueprint("shop", __name__)

    def tag(value: str) -> None:
        @after_this_request
        def add_header(response: Response) -> None:
            response.headers.add("X-Tag", value)

    @blueprint.before_request
    async def blueprint_hook() -> None:
        tag("blueprint")

    @blueprint.get("/missing")
    async def missing() -> str:
        abort(404)

    @blueprint.get("/crash")
    async def crash() -> str:
        raise KeyError("crash")

    @app.errorhandler(404)
    async def not_found(error: Exception) -> tuple[str, int]:
        tag("error-handler")
        return "not here", 404

    app.register_blueprint(blueprint)

    missing_reply = await client.get("/missing")
    assert missing_reply.status_code == 404
    assert missing_reply.headers.getlist("X-Tag") == ["blueprint", "error-handler"]
    crash_reply = await client.get("/crash")
    assert crash_reply.status_code == 500
    assert crash_reply.headers.getlist("X-Tag") == ["blueprint"]


async def test_outside_a_request_is_a_clear_error(app: Quart) -> None:
    """after_this_request outside a request raises ContextError saying where to call it."""

    def callback(response: Response) -> None:
        pass

    with pytest.raises(ContextError, match="outside a request. Call it from a view"):
        after_this_request(callback)
    async with app.app_context():
        with pytest.raises(RuntimeError, match="outside a request"):
            after_this_request(callback)


async def test_in_a_websocket_points_to_the_alternatives(app: Quart) -> None:
    """after_this_request in a websocket handler points to after_this_websocket and
    after_this_response."""
    errors: list[str] = []

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        try:
            after_this_request(lambda response: None)
        except RuntimeError as error:
            errors.append(str(error))
        await websocket.send("done")

    async with app.test_client().websocket("/ws") as connection:
        assert await connection.receive() == "done"
    assert len(errors) == 1
    assert "after_this_websocket" in errors[0]
    assert "after_this_response" in errors[0]


async def test_too_late_once_the_response_has_started(app: Quart, client: Client) -> None:
    """Registering from a streaming body would never take effect, so it fails loudly."""
    errors: list[str] = []

    @app.get("/stream")
    async def stream() -> Any:
        @stream_with_context
        async def body() -> AsyncGenerator[bytes, None]:
            yield b"a"
            try:
                after_this_request(lambda response: None)
            except ContextError as error:
                errors.append(str(error))
            yield b"b"

        return body()

    reply = await client.get("/stream")
    assert reply.text == "ab"
    assert len(errors) == 1
    assert "had started to go out" in errors[0]


async def test_callbacks_that_never_ran_are_logged(
    app: Quart, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that leaves mid-handler cancels it before after_request; say so, by name."""
    registered = asyncio.Event()

    @app.get("/")
    async def index() -> str:
        @after_this_request
        def set_cookie(response: Response) -> None:
            pass

        registered.set()
        await asyncio.Event().wait()  # Until the client leaves.
        return "never"

    async with app.test_client().request("/") as connection:
        await wait(registered.wait())
        await connection.disconnect()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "set_cookie for GET / did not run" in warnings[0].getMessage()
    assert warnings[0].__dict__["deferred_callback"].endswith("set_cookie")


async def test_works_in_a_test_request_context_and_without_the_extension() -> None:
    """Unit tests drive process_response by hand; apps without QuartDeferred work too."""
    app = Quart(__name__)  # QuartDeferred(app) never called: no ASGI layer, state on g.
    calls: list[str] = []

    async with app.test_request_context("/") as ctx:

        @after_this_request
        async def first(response: Response) -> None:
            calls.append("first")

        @after_this_request
        def second(response: Response) -> Response:
            calls.append("second")
            return Response("replaced")

        response = await _process_response(app, ctx, Response("original"))

    assert calls == ["first", "second"]
    assert isinstance(response, Response)
    assert await response.get_data() == b"replaced"
    async with app.test_request_context("/") as ctx:  # A new request starts with no callbacks.
        await _process_response(app, ctx, Response("again"))
    assert calls == ["first", "second"]


async def _process_response(app: Quart, ctx: Any, response: Response) -> Any:
    """Call ``app.process_response`` as this Quart wants: 0.23 takes the context first."""
    process: Any = app.process_response  # Typed against whichever Quart mypy sees.
    if "ctx" in inspect.signature(process).parameters:
        return await process(ctx, response)
    return await process(response)


async def test_after_this_request_once_the_callbacks_have_run_is_refused(app: Quart) -> None:
    """From an after_request function, after the request's callbacks ran, the callback could
    never be called: the call raises instead of accepting it and dropping it later."""
    errors: list[str] = []

    @app.get("/")
    async def index() -> str:
        after_this_request(lambda response: None)
        return "ok"

    @app.after_request
    async def late(response: Response) -> Response:
        try:
            after_this_request(lambda response: None)
        except ContextError as error:
            errors.append(str(error))
        return response

    response = await app.test_client().get("/")
    assert response.status_code == 200
    [message] = errors
    assert "after its deferred callbacks had run" in message
    assert "from an after_request function" in message


def test_the_outside_a_request_message_names_only_places_where_it_works() -> None:
    """The outside-a-request message does not suggest after_request functions, where it fails."""
    with pytest.raises(ContextError) as raised:
        after_this_request(lambda response: None)
    assert "after_request" not in str(raised.value)
