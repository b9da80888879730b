"""Outcomes under every server we support, each a real process on 127.0.0.1.

``tests.apps.outcomes:app`` is served by hypercorn, uvicorn and granian in
turn; each test drives it with raw sockets or a websocket client, then reads
``/results``: which of each request's ``when="success"`` and
``when="failure"`` jobs ran, and what ``Delivery.complete`` said.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import json
import time
from typing import Any

import pytest
import pytest_asyncio
import websockets

from benchmarks.loadgen import Connection

from .conftest import QUART_VERSION, wait
from .servers import ServerProcess, serving
from .test_completeness import read_promised_then_close

SERVERS = ["hypercorn", "uvicorn", "granian"]
SHUTDOWN_TIMEOUT = 1.0
REQUESTS = 40


APP = "tests.apps.outcomes:app"
ENV = {"SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)}


async def results_of(served: ServerProcess) -> dict[str, Any]:
    """What ran for each request id, and what each Delivery said, once all work is done."""
    status, body = await wait(served.get("/results"), timeout=20)
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


@pytest_asyncio.fixture(name="served", params=SERVERS, scope="module", loop_scope="module")
async def _served(request: pytest.FixtureRequest) -> AsyncIterator[ServerProcess]:
    async with serving(request.param, APP, env=ENV) as served:
        yield served


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize("body", ["plain", "file", "iterable"])
async def test_a_client_that_closes_once_it_has_every_byte_got_a_complete_response(
    served: ServerProcess, body: str
) -> None:
    """Under each server, a client that closes as soon as it has every promised byte got a complete
    response."""
    ids = [f"{body}-{served.name}-{number}" for number in range(REQUESTS)]
    for request_id in ids:
        await wait(read_promised_then_close(served.port, f"/{body}/{request_id}"))
    results = await results_of(served)
    assert [results["ran"].get(request_id) for request_id in ids] == [["success"]] * REQUESTS
    assert [results["complete"].get(request_id) for request_id in ids] == [[True]] * REQUESTS


async def test_a_failed_request_and_a_stream_left_midway_run_the_failure_work(
    served: ServerProcess,
) -> None:
    """Under each server, a 500 and a stream the client left midway run when='failure' work."""
    assert (await served.get(f"/error/error-{served.name}"))[0] == 500
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(f"GET /stream/stream-{served.name} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(4096)  # Some chunks of fifty, then leave.
    writer.transport.abort()
    await asyncio.sleep(1)  # The stream's remaining chunks would take 0.4 s.
    results = await results_of(served)
    assert results["ran"][f"error-{served.name}"] == ["failure"]
    assert results["ran"][f"stream-{served.name}"] == ["failure"]
    assert results["complete"][f"stream-{served.name}"] == [False]


async def test_keep_alive_is_not_held_by_post_response_work(served: ServerProcess) -> None:
    """The next request on a keep-alive connection does not wait for the previous one's work."""
    async with await Connection.open("127.0.0.1", served.port) as connection:
        assert await connection.get(f"/slow-job/ka-{served.name}") == (200, b"ok")
        began = time.monotonic()
        assert await connection.get("/health") == (200, b"ok")
        took = time.monotonic() - began
    assert took < 0.5, f"the next request on the connection waited {took:.2f}s"


async def test_websocket_outcomes(served: ServerProcess) -> None:
    """Accepted and ended normally (the client closing included): success. The handler
    raising, or a close before accept: failure."""
    base = f"ws://127.0.0.1:{served.port}/ws"
    async with websockets.connect(f"{base}/ok/ws-ok-{served.name}") as ws:
        await ws.send("hi")
        assert await ws.recv() == "echo hi"
    async with websockets.connect(f"{base}/raise/ws-raise-{served.name}") as ws:
        await ws.send("hi")
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    # Granian 2.8's worker panics (src/asgi/conversion.rs: unreachable) on the denial
    # response Quart 0.23 sends for a close before accept, and the server is gone.
    refuse = not (served.name == "granian" and QUART_VERSION >= (0, 23))
    if refuse:
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"{base}/reject/ws-reject-{served.name}"):
                pass
    await asyncio.sleep(0.2)  # The server's side of each close.
    results = await results_of(served)
    assert results["ran"][f"ws-ok-{served.name}"] == ["success"]
    assert results["ran"][f"ws-raise-{served.name}"] == ["failure"]
    if refuse:
        assert results["ran"][f"ws-reject-{served.name}"] == ["failure"]


@pytest.mark.parametrize("server", SERVERS)
async def test_sigterm_drains_and_names_what_it_cancels(server: str) -> None:
    """SIGTERM drains, names the job it cancels, and the server exits within the timeout."""
    async with serving(server, APP, env=ENV) as served:
        assert await served.get("/long-job/drained") == (200, b"ok")
        await wait(served.saw("started long job drained"))
        took = await served.stop()
    assert (
        "long_job.<locals>.sleeps for GET /long-job/drained at shutdown: it was still running"
        in (served.output)
    ), served.output[-3000:]
    assert took < SHUTDOWN_TIMEOUT + 2, f"{server} exited {took:.2f}s after SIGTERM"


async def test_without_the_lifespan_it_says_so_once_at_the_first_request() -> None:
    """uvicorn --lifespan off: no drain is possible, and the first request's WARNING says so.

    At SIGTERM uvicorn ends its serve() by raising the signal again with the default
    handler, so the process dies before the event loop can cancel (and so log) the job
    still running: the WARNING is all the notice there can be.
    """
    async with serving("uvicorn", APP, "--lifespan", "off", env=ENV) as served:
        await wait(served.saw("without the ASGI lifespan"))
        assert await served.get("/long-job/no-lifespan") == (200, b"ok")
        await wait(served.saw("started long job no-lifespan"))
        took = await served.stop()
    assert served.output.count("without the ASGI lifespan") == 1
    assert "cannot drain deferred work at shutdown" in served.output
    assert took < 5
