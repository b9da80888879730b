"""A response is complete once the server has every byte the client was promised.

Quart sends a body as data messages, then a separate empty final message. A
client that has read all Content-Length bytes may close at once, and the
server may then cancel Quart's handler before that empty message goes out:
the client still got the whole response, so ``when="success"`` work runs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
import contextlib
from pathlib import Path
from typing import Any

import pytest
from quart import Quart, Response, send_file

from benchmarks.asgi import scope as http_scope
from quart_deferred import after_this_response, Delivery, QuartDeferred

from .conftest import wait
from .servers import running

REQUESTS = 40


async def read_promised_then_close(port: int, path: str) -> bytes:
    """GET *path*, read exactly the Content-Length bytes of the body, then close at once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await reader.readexactly(length)
    writer.transport.abort()  # As curl and one-shot clients do: no goodbye.
    return body


@pytest.fixture(name="big_file")
def _big_file(tmp_path: Path) -> Path:
    path = tmp_path / "report.bin"
    path.write_bytes(bytes(range(256)) * 1024)  # 256 KiB: several reads on a thread.
    return path


# Quart leaves send_file's file open when the server cancels its handler after the last
# bytes (the client has gone): its ResourceWarning is Quart's, not what this test checks.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("body", ["send_file", "iterable", "plain"])
async def test_a_client_that_closes_once_it_has_every_byte_got_a_complete_response(
    app: Quart, deferred: QuartDeferred, big_file: Path, body: str
) -> None:
    """In-process: a response is complete once its content-length bytes went out, empty final
    message or not."""
    outcomes: Counter[str] = Counter()
    deliveries: list[bool] = []

    @deferred.after_response
    async def record(delivery: Delivery) -> None:
        deliveries.append(delivery.complete)

    @app.get("/")
    async def index() -> Response:
        after_this_response(outcomes.update, ["success"], when="success")
        after_this_response(outcomes.update, ["failure"], when="failure")
        if body == "send_file":
            return await send_file(big_file)
        if body == "iterable":

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(8):
                    await asyncio.sleep(0)
                    yield b"x" * 8192

            response = Response(chunks())
            response.headers["Content-Length"] = str(8 * 8192)
            return response
        return Response(b"y" * 65536)

    async with running(app) as url:
        port = int(url.rsplit(":", 1)[1])
        for _ in range(REQUESTS):
            await wait(read_promised_then_close(port, "/"))
        await wait(deferred.join(), timeout=30)
    assert outcomes == Counter(success=REQUESTS)
    assert deliveries == [True] * REQUESTS


async def test_a_send_after_the_server_reported_the_client_gone_completes_nothing(
    app: Quart, deferred: QuartDeferred
) -> None:
    """The server reports http.disconnect, then accepts the final message anyway and drops
    it, as hypercorn does: the client did not get the response, so only "failure" runs."""
    outcomes: Counter[str] = Counter()
    deliveries: list[bool] = []

    @deferred.after_response
    async def record(delivery: Delivery) -> None:
        deliveries.append(delivery.complete)

    @app.get("/")
    async def index() -> str:
        after_this_response(outcomes.update, ["success"], when="success")
        after_this_response(outcomes.update, ["failure"], when="failure")
        return "ok"

    loop = asyncio.get_running_loop()
    gone: asyncio.Future[dict[str, Any]] = loop.create_future()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await gone

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not gone.done():
            gone.set_result({"type": "http.disconnect"})  # The client resets now...
            await asyncio.sleep(0)  # ...and the server reports it, then drops this send.

    scope = http_scope("/")
    with contextlib.suppress(asyncio.CancelledError):
        await app.asgi_app(scope, receive, send)  # type: ignore[arg-type]
    await wait(deferred.join())
    assert outcomes == Counter(failure=1)
    assert deliveries == [False]


@pytest.mark.parametrize(
    ("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)], ids=["HEAD", "204", "304"]
)
async def test_responses_without_body_bytes_are_complete_at_their_final_message(
    app: Quart, deferred: QuartDeferred, method: str, status: int
) -> None:
    """A HEAD response promises a content-length it never sends; 204 and 304 have no body."""
    deliveries: list[tuple[int | None, bool]] = []

    @deferred.after_response
    async def record(delivery: Delivery) -> None:
        deliveries.append((delivery.status_code, delivery.complete))

    @app.route("/", methods=["GET", "HEAD"])
    async def index() -> tuple[str, int]:
        return ("" if status != 200 else "a body of 17 bytes"), status

    client = app.test_client()
    await (client.head("/") if method == "HEAD" else client.get("/"))
    await wait(deferred.join())
    assert deliveries == [(status, True)]


def _raw_exchange(messages: list[dict[str, Any]], *, end: bool = True) -> Any:
    """An ASGI app (not Quart) that sends *messages*; with ``end=False`` it then fails."""

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)
        if not end:
            raise RuntimeError("the app failed before its last message")

    return raw


START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}


@pytest.mark.parametrize(
    ("messages", "end", "complete"),
    [
        (
            [
                {**START, "trailers": True},
                {"type": "http.response.body", "body": b"data", "more_body": False},
                {"type": "http.response.trailers", "headers": [], "more_trailers": False},
            ],
            True,
            True,
        ),
        (
            [
                {**START, "trailers": True},
                {"type": "http.response.body", "body": b"data", "more_body": False},
            ],
            False,
            False,
        ),
        ([START, {"type": "http.response.pathsend", "path": "/etc/hostname"}], True, True),
        (
            [START, {"type": "http.response.zerocopysend", "file": 0, "more_body": False}],
            True,
            True,
        ),
        (
            [START, {"type": "http.response.zerocopysend", "file": 0, "more_body": True}],
            False,
            False,
        ),
    ],
    ids=["trailers", "trailers-missing", "pathsend", "zerocopysend", "zerocopysend-unfinished"],
)
@pytest.mark.parametrize("http_version", ["1.1", "2"])
async def test_trailers_pathsend_and_zerocopysend_end_a_response(
    messages: list[dict[str, Any]], end: bool, complete: bool, http_version: str
) -> None:
    """The final message is the last trailers when trailers were announced, a pathsend, or
    the last zerocopysend; HTTP/2 carries the same messages."""
    from quart_deferred._asgi import PostResponseMiddleware

    app = Quart(__name__)
    deferred = QuartDeferred(app)
    seen: list[bool] = []

    @deferred.after_response
    async def record(delivery: Delivery) -> None:
        seen.append(delivery.complete)

    layer = PostResponseMiddleware(
        _raw_exchange(messages, end=end), app.extensions["quart_deferred"]
    )

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {"type": "http", "http_version": http_version, "method": "GET", "path": "/"}
    async with app.app_context():
        with contextlib.suppress(RuntimeError):
            await layer(scope, receive, send)  # type: ignore[arg-type]
        await wait(deferred.join())
    assert seen == [complete]
