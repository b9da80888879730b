"""The app the server tests serve with hypercorn, uvicorn and granian in a subprocess.

Every view registers a ``when="success"`` and a ``when="failure"`` job under
the request id in its path; ``/results`` reports, after a ``join()``, which
of them ran for each id, and what the app-wide hook's ``Delivery`` said.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
import logging
import os
import sys
import tempfile
from typing import Any

from quart import Quart, request, Response, send_file, websocket

from quart_deferred import after_this_response, Delivery, QuartDeferred

logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(levelname)s %(message)s")
logger = logging.getLogger("outcomes_app")
logger.setLevel(logging.INFO)

app = Quart(__name__)
deferred = QuartDeferred(app, shutdown_timeout=float(os.environ.get("SHUTDOWN_TIMEOUT", "1")))
ran: dict[str, list[str]] = defaultdict(list)
complete: dict[str, list[bool]] = defaultdict(list)

FILE = os.path.join(tempfile.mkdtemp(prefix="quart-deferred-"), "report.bin")
with open(FILE, "wb") as file:
    file.write(bytes(range(256)) * 1024)  # 256 KiB: several reads on a thread.


def register(request_id: str) -> None:
    after_this_response(ran[request_id].append, "success", when="success")
    after_this_response(ran[request_id].append, "failure", when="failure")


@deferred.after_response
async def record(delivery: Delivery) -> None:
    complete[request.path.rsplit("/", 1)[1]].append(delivery.complete)


@app.get("/plain/<request_id>")
async def plain(request_id: str) -> Response:
    register(request_id)
    return Response(b"y" * 65536)


@app.get("/file/<request_id>")
async def file_body(request_id: str) -> Response:
    register(request_id)
    return await send_file(FILE)


@app.get("/iterable/<request_id>")
async def iterable(request_id: str) -> Response:
    register(request_id)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            await asyncio.sleep(0)
            yield b"x" * 8192

    response = Response(chunks())
    response.headers["Content-Length"] = str(8 * 8192)
    return response


@app.get("/stream/<request_id>")
async def stream(request_id: str) -> Response:
    """No content-length: 50 chunks, 10 ms apart; the test leaves in the middle."""
    register(request_id)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(50):
            await asyncio.sleep(0.01)
            yield b"z" * 1024

    return Response(chunks())


@app.get("/error/<request_id>")
async def error(request_id: str) -> str:
    register(request_id)
    raise RuntimeError("planned failure")


@app.get("/slow-job/<request_id>")
async def slow_job(request_id: str) -> str:
    """Its post-response job sleeps 1 s: the next request on the connection must not wait."""
    register(request_id)
    after_this_response(asyncio.sleep, 1)
    return "ok"


@app.get("/long-job/<request_id>")
async def long_job(request_id: str) -> str:
    """A 30 s job, for the drain at SIGTERM."""

    async def sleeps() -> None:
        logger.info("started long job %s", request_id)
        await asyncio.sleep(30)

    after_this_response(sleeps)
    return "ok"


@app.websocket("/ws/<kind>/<request_id>")
async def ws(kind: str, request_id: str) -> None:
    register(request_id)
    if kind == "reject":
        await websocket.close(1008)  # Before accept: the server answers 403.
        return
    await websocket.accept()
    message = await websocket.receive()
    if kind == "raise":
        raise RuntimeError("the handler failed after accepting")
    await websocket.send(f"echo {message!s}")


@app.get("/results")
async def results() -> dict[str, Any]:
    await deferred.join(timeout=10)
    return {"ran": ran, "complete": complete}


@app.get("/health")
async def health() -> str:
    return "ok"
