"""after_this_response: work that starts once the final response message has been sent."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator
import gc
import threading
from typing import Any
import weakref

import httpx
import pytest
from quart import current_app, g, Quart, request, Response, session, websocket

from benchmarks.loadgen import Connection
from quart_deferred import after_this_request, after_this_response, ContextError, QuartDeferred

from .conftest import Client, QUART_VERSION, until, wait
from .servers import running


async def test_work_starts_only_after_the_client_has_the_whole_body(
    app: Quart, deferred: QuartDeferred, served: str
) -> None:
    """The callback waits for an event the client sets after reading the body.

    Were the callback on the response path, the client would never get the
    body, never set the event, and the test would time out.
    """
    client_has_body = asyncio.Event()
    order: list[str] = []

    @app.get("/")
    async def index() -> str:
        @after_this_response
        async def after() -> None:
            order.append("callback started")
            await client_has_body.wait()
            order.append("callback finished")

        return "x" * 100_000

    async with httpx.AsyncClient(base_url=served) as http:
        response = await wait(http.get("/"))
        assert len(response.text) == 100_000
        order.append("client has body")
        client_has_body.set()
        await deferred.join(timeout=5)
    assert order[-1] == "callback finished"
    assert deferred.stats().succeeded == 1


async def test_test_client_returns_before_the_work_finishes(
    app: Quart, deferred: QuartDeferred
) -> None:
    """The test client gets the response while the work is still running."""
    release = asyncio.Event()

    @app.get("/")
    async def index() -> str:
        after_this_response(release.wait)
        return "ok"

    response = await wait(app.test_client().get("/"))
    assert await response.get_data(as_text=True) == "ok"
    assert deferred.stats().running == 1
    release.set()
    await deferred.join(timeout=5)
    assert deferred.stats().succeeded == 1


async def test_slow_work_delays_neither_response_nor_next_request_on_the_connection(
    app: Quart, deferred: QuartDeferred, served: str
) -> None:
    """A post-response job holding on keeps neither this response nor the next request.

    The job runs until the test lets it go, which is only after the second
    response on the same keep-alive connection has arrived. A job on the
    response path would deadlock this test.
    """
    started = asyncio.Event()
    release = asyncio.Event()
    ports: list[int] = []

    @app.get("/slow")
    async def slow() -> str:
        ports.append(request.scope["client"][1])  # type: ignore[index]

        @after_this_response
        async def one_second_job() -> None:
            started.set()
            await release.wait()  # Stands in for a second of work; longer if need be.

        return "slow"

    @app.get("/fast")
    async def fast() -> str:
        ports.append(request.scope["client"][1])  # type: ignore[index]
        return "fast"

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=served, limits=limits) as http:
        assert (await wait(http.get("/slow"))).text == "slow"
        await wait(started.wait())
        assert (await wait(http.get("/fast"))).text == "fast"
        assert deferred.stats().running == 1  # The job is still going.
        release.set()
        await deferred.join(timeout=5)
    assert ports[0] == ports[1], "both requests must use one keep-alive connection"


async def test_request_g_session_and_app_inside_callbacks(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """The request's context is there, and g holds what the view set (also on threads)."""
    seen: list[dict[str, Any]] = []
    loop_thread = threading.get_ident()

    def snapshot(kind: str) -> None:
        seen.append(
            {
                "kind": kind,
                "path": request.path,
                "arg": request.args["id"],
                "user": g.user,
                "later": g.set_after_registration,
                "session": session.get("cart"),
                "app": current_app.name,
                "on_loop_thread": threading.get_ident() == loop_thread,
            }
        )

    @app.get("/")
    async def index() -> str:
        g.user = "alice"
        session["cart"] = 3

        async def async_job() -> None:
            snapshot("async")

        def sync_job() -> None:
            snapshot("sync")

        after_this_response(async_job)
        after_this_response(sync_job)
        g.set_after_registration = True  # g is shared, not copied.
        return "ok"

    await client.get("/?id=7")
    await deferred.join(timeout=5)
    expected = {"path": "/", "arg": "7", "user": "alice", "later": True, "session": 3}
    expected |= {"app": app.name}
    assert seen == [
        {"kind": "async", **expected, "on_loop_thread": True},
        {"kind": "sync", **expected, "on_loop_thread": False},
    ]


async def test_teardown_runs_once_before_the_work_and_not_again(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """The documented choice: teardown has run before the work, and does not run again."""
    events: list[str] = []

    @app.teardown_request
    async def teardown_request(exc: BaseException | None) -> None:
        events.append("teardown_request")

    @app.teardown_appcontext
    async def teardown_appcontext(exc: BaseException | None) -> None:
        if g.get("in_request"):  # Not the app context of hypercorn's lifespan startup.
            events.append("teardown_appcontext")

    @app.get("/")
    async def index() -> str:
        g.in_request = True
        after_this_response(events.append, "work")
        return "ok"

    await client.get("/")
    await deferred.join(timeout=5)
    assert events == ["teardown_request", "teardown_appcontext", "work"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/ok", {"always", "success"}),
        ("/missing", {"always", "failure"}),
        ("/crash", {"always", "failure"}),
        ("/redirect", {"always", "success"}),
    ],
)
async def test_when_follows_the_status(
    app: Quart, deferred: QuartDeferred, client: Client, path: str, expected: set[str]
) -> None:
    """when='success' runs below 400, when='failure' at 400 and above, 'always' for both."""
    ran: set[str] = set()

    @app.before_request
    async def register() -> None:
        for when in ("always", "success", "failure"):
            after_this_response(ran.add, when, when=when)

    @app.get("/ok")
    async def ok() -> str:
        return "ok"

    @app.get("/crash")
    async def crash() -> str:
        raise RuntimeError("crash")

    @app.get("/redirect")
    async def redirect() -> Response:
        return Response("", status=302, headers={"Location": "/ok"})

    await client.get(path, follow_redirects=False)
    await deferred.join(timeout=5)
    assert ran == expected
    assert deferred.stats().skipped == 1


async def test_streaming_response_runs_after_the_last_chunk(
    app: Quart, deferred: QuartDeferred, served: str
) -> None:
    """Work for a streamed response runs after its last chunk has gone out."""
    client_has_all = asyncio.Event()
    ran: list[str] = []

    @app.get("/stream")
    async def stream() -> Any:
        @after_this_response(when="success")
        async def after_stream() -> None:
            await client_has_all.wait()
            ran.append("success")

        async def body() -> AsyncGenerator[bytes, None]:
            for index in range(5):
                yield f"chunk{index};".encode()

        return body()

    async with (
        httpx.AsyncClient(base_url=served) as http,
        http.stream("GET", "/stream") as response,
    ):
        chunks = [chunk async for chunk in response.aiter_text()]
    assert "".join(chunks) == "".join(f"chunk{index};" for index in range(5))
    client_has_all.set()
    await deferred.join(timeout=5)
    assert ran == ["success"]


async def test_client_disconnect_mid_stream_is_a_failure(
    app: Quart, deferred: QuartDeferred, served: str
) -> None:
    """A client that leaves mid-stream makes the exchange a failure."""
    first_chunk_sent = asyncio.Event()
    ran: set[str] = set()
    never = asyncio.Event()

    @app.get("/stream")
    async def stream() -> Any:
        for when in ("always", "success", "failure"):
            after_this_response(ran.add, when, when=when)

        async def body() -> AsyncGenerator[bytes, None]:
            yield b"first"
            first_chunk_sent.set()
            await never.wait()  # The client leaves before the rest.
            yield b"never sent"

        return body()

    async with (
        httpx.AsyncClient(base_url=served) as http,
        http.stream("GET", "/stream") as response,
    ):
        async for chunk in response.aiter_bytes():
            assert chunk == b"first"
            break
    # Leaving the block closed the connection mid-stream.
    await wait(first_chunk_sent.wait())
    await wait(until(lambda: deferred.stats().scheduled == 2))
    await deferred.join(timeout=5)
    assert ran == {"always", "failure"}


@pytest.mark.skipif(
    QUART_VERSION >= (0, 23),
    reason="Quart 0.23 does not end a stalled body at its response timeout (bare Quart hangs)",
)
async def test_response_timeout_is_a_failure(
    app: Quart, deferred: QuartDeferred, served: str
) -> None:
    """Quart gives up on a body that takes longer than the response timeout."""
    ran: set[str] = set()
    never = asyncio.Event()

    @app.get("/slow-body")
    async def slow_body() -> Response:
        for when in ("success", "failure"):
            after_this_response(ran.add, when, when=when)

        async def body() -> AsyncGenerator[bytes, None]:
            yield b"a"
            await never.wait()

        response = Response(body())
        response.timeout = 0.01
        return response

    async with httpx.AsyncClient(base_url=served) as http:
        with pytest.raises(httpx.RemoteProtocolError):  # The body was cut short.
            await wait(http.get("/slow-body"))
    await wait(until(lambda: deferred.stats().scheduled == 1))
    await deferred.join(timeout=5)
    assert ran == {"failure"}


async def test_work_in_a_websocket_runs_after_the_connection_closed(
    app: Quart, deferred: QuartDeferred
) -> None:
    """Work registered in a websocket handler runs after the connection has closed."""
    events: list[str] = []

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()

        @after_this_response(when="success")
        async def after_close() -> None:
            events.append(f"work for {websocket.path}")

        await websocket.send("hello")
        await websocket.receive()  # Until the client closes.

    async with app.test_client().websocket("/ws") as connection:
        assert await connection.receive() == "hello"
        await connection.send("bye")
        events.append("client closing")
    await deferred.join(timeout=5)
    assert events == ["client closing", "work for /ws"]


async def test_outside_a_request_points_to_start_soon(app: Quart) -> None:
    """after_this_response outside a request raises ContextError pointing to start_soon."""

    async def job() -> None:
        pass

    with pytest.raises(ContextError, match=r"outside a request or websocket.*start_soon"):
        after_this_response(job)
    async with app.app_context():
        with pytest.raises(RuntimeError, match="deferred.start_soon"):
            after_this_response(job)


async def test_too_late_from_inside_post_response_work(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """after_this_response inside post-response work is refused: the response is gone."""
    errors: list[str] = []

    async def nested() -> None:
        pass

    @app.get("/")
    async def index() -> str:
        @after_this_response
        async def job() -> None:
            try:
                after_this_response(nested)
            except ContextError as error:
                errors.append(str(error))

        return "ok"

    await client.get("/")
    await deferred.join(timeout=5)
    assert len(errors) == 1
    assert "after the response to GET / had already been sent" in errors[0]
    assert "start_soon" in errors[0]


async def test_test_request_context_has_no_response_to_wait_for(app: Quart) -> None:
    """Under test_request_context there is no response to wait for, and the error says to use the
    test client."""

    async def job() -> None:
        pass

    async with app.test_request_context("/"):
        with pytest.raises(ContextError, match="app.test_client"):
            after_this_response(job)


async def test_decorator_forms_and_return_value(app: Quart, deferred: QuartDeferred) -> None:
    """The call form returns the function, the decorator forms register and return it."""
    calls: list[str] = []

    async def send_mail(address: str, *, subject: str) -> None:
        calls.append(f"{address}: {subject}")

    @app.get("/")
    async def index() -> str:
        assert after_this_response(send_mail, "a@example.com", subject="hi") is send_mail

        @after_this_response
        def bare() -> None:
            calls.append("bare")

        @after_this_response(when="always")
        async def with_options() -> None:
            calls.append("with options")

        return "ok"

    await app.test_client().get("/")
    await deferred.join(timeout=5)
    assert calls == ["a@example.com: hi", "bare", "with options"]


async def test_five_hundred_concurrent_requests_each_see_only_their_own(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """Every callback sees its own request and g, and each ran exactly once."""
    seen: list[tuple[str, str, str, str]] = []

    def record(kind: str, request_id: str) -> None:
        seen.append((kind, request_id, request.args["id"], g.request_id))

    @app.get("/")
    async def index() -> str:
        g.request_id = request.args["id"]
        await asyncio.sleep(0)  # Let the other requests interleave with this one.

        async def async_job() -> None:
            await asyncio.sleep(0)
            record("async", g.request_id)

        def sync_job() -> None:
            record("sync", g.request_id)

        after_this_response(async_job)
        after_this_response(sync_job)
        return g.request_id  # type: ignore[no-any-return]

    ids = [str(index) for index in range(500)]
    replies = await wait(asyncio.gather(*(client.get(f"/?id={i}") for i in ids)), timeout=60)
    assert [reply.text for reply in replies] == ids
    await deferred.join(timeout=30)
    assert sorted(seen) == sorted((kind, i, i, i) for i in ids for kind in ("async", "sync"))
    stats = deferred.stats()
    assert (stats.scheduled, stats.succeeded) == (1000, 1000)


async def test_a_plain_def_view_registers_work_from_its_thread(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """Quart runs a plain view on a thread; registering from there works as from async code."""
    ran: list[str] = []

    @app.get("/")
    def index() -> str:
        after_this_response(ran.append, f"after {request.path}")
        return "ok"

    reply = await client.get("/")
    await deferred.join(timeout=5)
    assert (reply.status_code, ran) == (200, ["after /"])


async def test_registering_from_a_plain_jobs_thread_says_what_to_do(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """after_this_response from a plain job's thread says why not and what to use."""
    errors: list[str] = []

    def job() -> None:
        try:
            after_this_response(print)
        except ContextError as error:
            errors.append(str(error))

    @app.get("/")
    async def index() -> str:
        after_this_response(job)
        return "ok"

    await client.get("/")
    await deferred.join(timeout=5)
    assert len(errors) == 1
    assert "already been sent" in errors[0]
    assert "from an async def job: plain jobs run on a thread" in errors[0]


@pytest.mark.parametrize("registers", ["nothing", "a callback", "work", "both"])
async def test_a_finished_request_is_freed_without_the_garbage_collector(
    app: Quart, deferred: QuartDeferred, client: Client, registers: str
) -> None:
    """No reference cycle outlives the exchange: a request's memory comes back at once."""
    requests: list[weakref.ref[Any]] = []

    async def keep(response: Response) -> None:
        pass

    async def work() -> None:
        pass

    @app.get("/")
    async def index() -> str:
        requests.append(weakref.ref(request._get_current_object()))  # type: ignore[attr-defined]
        if registers in ("a callback", "both"):
            after_this_request(keep)
        if registers in ("work", "both"):
            after_this_response(work)
        return "ok"

    await client.get("/")  # Warm up: the runner and its first worker.
    await deferred.join()
    gc.collect()
    gc.disable()
    try:
        assert (await client.get("/")).text == "ok"
        await deferred.join()
        await asyncio.sleep(0)  # Let the worker drop the batch it ran.
        alive = requests[-1]() is not None
    finally:
        gc.enable()
    assert not alive


@pytest.mark.parametrize("registers", ["nothing", "a callback", "work"])
async def test_a_served_request_leaves_the_collector_no_more_than_bare_quart(
    registers: str,
) -> None:
    """Under hypercorn the extension adds no reference cycle to a request.

    A cycle through the exchange (the server's stream holds the scope, the scope
    the exchange, the exchange the stream's send) kept every request's stream,
    queue and events alive until the next collection: more and longer pauses.
    """

    async def keep(response: Response) -> None:
        pass

    async def work() -> None:
        pass

    def make(with_extension: bool) -> Quart:
        app = Quart(__name__)
        if with_extension:
            QuartDeferred(app)

        @app.get("/")
        async def index() -> str:
            if with_extension and registers == "a callback":
                after_this_request(keep)
            elif with_extension and registers == "work":
                after_this_response(work)
            return "ok"

        return app

    async def garbage_per_request(app: Quart) -> Counter[str]:
        requests = 20
        async with running(app) as url:
            host, port = url.removeprefix("http://").split(":")
            async with await Connection.open(host, int(port)) as connection:
                await connection.get("/")  # Warm up.
                gc.collect()
                gc.disable()
                gc.set_debug(gc.DEBUG_SAVEALL)
                try:
                    for _ in range(requests):
                        assert await connection.get("/") == (200, b"ok")
                    if app.extensions:
                        await app.extensions["quart_deferred"].extension.join(timeout=5)
                    gc.collect()
                    found = Counter(type(item).__qualname__ for item in gc.garbage)
                finally:
                    gc.set_debug(0)
                    gc.garbage.clear()
                    gc.enable()
        return Counter({name: count // requests for name, count in found.items()})

    assert await garbage_per_request(make(True)) == await garbage_per_request(make(False))
