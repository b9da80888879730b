"""Latency: the response is not held by post-response work, and that work starts promptly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
import importlib.util
import sys
import time

from quart import Quart, request

from quart_deferred import after_this_response, QuartDeferred
from tests.servers import running

from .asgi import request as asgi_request
from .loadgen import Connection
from .report import median, percentile, Report


def _app() -> tuple[Quart, QuartDeferred, dict[str, float]]:
    app = Quart("latency")
    deferred = QuartDeferred(app)
    started: dict[str, float] = {}

    async def record_start(request_id: str) -> None:
        started[request_id] = time.perf_counter()

    # Both views read the same argument, so that the only difference between
    # them is the post-response work.
    @app.get("/plain")
    async def plain() -> str:
        float(request.args.get("seconds", "0.2"))
        return "ok"

    @app.get("/sleeps")
    async def sleeps() -> str:
        after_this_response(asyncio.sleep, float(request.args.get("seconds", "0.2")))
        return "ok"

    @app.get("/record")
    async def record() -> str:
        after_this_response(record_start, request.args["id"])
        return "ok"

    return app, deferred, started


async def run(report: Report, *, rounds: int) -> None:
    await _time_to_final_send(report, rounds)
    await _starlette_holds_the_call(report, rounds)
    await _start_latency(report)
    await _keep_alive(report, rounds)


@asynccontextmanager
async def _serving() -> AsyncIterator[tuple[Quart, QuartDeferred, dict[str, float]]]:
    """The app with its lifespan started, so that its runner is shut down, not dropped."""
    app, deferred, started = _app()
    async with app.test_app():
        yield app, deferred, started


async def _time_to_final_send(report: Report, rounds: int) -> None:
    """A view scheduling 200 ms of post-response work vs the same view without it."""
    to_send: dict[str, list[float]] = {"/plain": [], "/sleeps": []}
    to_return: dict[str, list[float]] = {"/plain": [], "/sleeps": []}
    async with _serving() as (app, deferred, _):
        for _ in range(rounds * 20):
            for path in ("/plain", "/sleeps"):
                started = time.perf_counter()
                exchange = await asgi_request(app, path)
                to_return[path].append(time.perf_counter() - started)
                to_send[path].append(exchange.final_sent_at - started)
        await deferred.join()
    send_ratio = median(to_send["/sleeps"]) / median(to_send["/plain"])
    return_ratio = median(to_return["/sleeps"]) / median(to_return["/plain"])
    report.add(
        "latency",
        "time to final send, with 200 ms post-response work",
        f"x{send_ratio:.3f} ({median(to_send['/sleeps']) * 1e3:.3f} ms)",
        "≤ x1.05",
        send_ratio <= 1.05,
    )
    report.add(
        "latency",
        "ASGI call duration, with 200 ms post-response work",
        f"x{return_ratio:.3f} ({median(to_return['/sleeps']) * 1e3:.3f} ms)",
        "≤ x1.05 (not held)",
        return_ratio <= 1.05,
    )
    print("  latency: time to final send done", file=sys.stderr)


async def _starlette_holds_the_call(report: Report, rounds: int) -> None:
    """For comparison: Starlette runs a BackgroundTask in the ASGI call, after the final send."""
    if importlib.util.find_spec("starlette") is None:
        report.add("latency", "Starlette, for comparison", "skipped: pip install starlette")
        return
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def sleeps(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(asyncio.sleep, 0.2))

    async def passthrough(request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)

    routes = [Route("/plain", plain), Route("/sleeps", sleeps)]
    for label, middleware in (
        ("Starlette", []),
        ("Starlette behind BaseHTTPMiddleware", [Middleware(BaseHTTPMiddleware, passthrough)]),
    ):
        app = Starlette(routes=routes, middleware=middleware)
        to_return: dict[str, list[float]] = {"/plain": [], "/sleeps": []}
        for _ in range(rounds):
            for path in ("/plain", "/sleeps"):
                started = time.perf_counter()
                await asgi_request(app, path)
                to_return[path].append(time.perf_counter() - started)
        held, unheld = median(to_return["/sleeps"]), median(to_return["/plain"])
        report.add(
            "latency",
            f"{label}: ASGI call with a 200 ms BackgroundTask",
            f"{held * 1e3:.0f} ms, x{held / unheld:.0f} (held for the task)",
        )
    print("  latency: Starlette done", file=sys.stderr)


async def _start_latency(report: Report) -> None:
    """From the final send returning to the job's first line."""
    for concurrency, goal_ms in ((1, 0.2), (100, 5.0)):
        sent: dict[str, float] = {}
        async with _serving() as (app, deferred, started):
            await _send_recorded(app, sent, "warm-up", 200)
            await deferred.join()
            sent.clear()
            started.clear()
            await asyncio.gather(
                *(
                    _send_recorded(app, sent, str(i), 2000 // concurrency)
                    for i in range(concurrency)
                )
            )
            await deferred.join()
        delays = [(started[key] - sent[key]) * 1e3 for key in sent]
        p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
        report.add(
            "latency",
            f"start latency after the final send, c={concurrency}",
            f"p50 {p50:.3f} ms, p99 {p99:.3f} ms",
            f"p99 ≤ {goal_ms} ms",
            p99 <= goal_ms,
        )
    print("  latency: start latency done", file=sys.stderr)


async def _send_recorded(app: Quart, sent: dict[str, float], prefix: str, count: int) -> None:
    """Send *count* requests one after another, noting when each final body went out."""
    for index in range(count):
        request_id = f"{prefix}-{index}"
        exchange = await asgi_request(app, "/record", f"id={request_id}".encode())
        sent[request_id] = exchange.final_sent_at


async def _keep_alive(report: Report, rounds: int) -> None:
    """Over hypercorn: a second request on the connection, after a 1 s post-response task."""
    app, deferred, _ = _app()
    after: dict[str, list[float]] = {"/sleeps?seconds=1": [], "/plain": []}
    async with running(app) as url:
        host, port = url.removeprefix("http://").split(":")
        for _ in range(rounds * 3):
            for first in after:
                connection = await Connection.open(host, int(port))
                await connection.get(first)
                started = time.perf_counter()
                await connection.get("/plain")
                after[first].append(time.perf_counter() - started)
                await connection.close()
        await deferred.join()
    ratio = median(after["/sleeps?seconds=1"]) / median(after["/plain"])
    report.add(
        "latency",
        "keep-alive: 2nd request after a 1 s post-response task",
        f"x{ratio:.3f} ({median(after['/sleeps?seconds=1']) * 1e3:.2f} ms)",
        "≤ x1.2",
        ratio <= 1.2,
    )
    print("  latency: keep-alive done", file=sys.stderr)
