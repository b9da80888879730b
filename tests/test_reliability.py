"""Every callback accounted for under load, faults and crowded threads, on a real hypercorn.

These are the figures the README's "Reliability" section quotes. Each test is
bounded in requests and time, and talks to 127.0.0.1 only. They take about
90 s, so they carry the ``reliability`` marker: ``nox -s tests`` leaves them
out, ``nox -s reliability`` runs them (the README's test command runs both).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
import gc
import logging
import os
import random
import threading
import time
import tracemalloc
from typing import Any
from urllib.parse import urlsplit
import weakref

import pytest
from quart import g, Quart, request, Response, session

from benchmarks.loadgen import Connection
from quart_deferred import after_this_request, after_this_response, QuartDeferred

from .conftest import add_up, until, wait
from .servers import connections_open, running

pytestmark = pytest.mark.reliability

# The figures in the README's "Reliability" section; set fewer for a quick local run.
REQUESTS = int(os.environ.get("RELIABILITY_REQUESTS", "20000"))
CONCURRENCY = 100


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


async def drive(
    port: int, count: int, request_one: Callable[[Connection, int], Awaitable[None]]
) -> None:
    """Send requests 0 to *count* - 1 over CONCURRENCY keep-alive connections."""
    numbers = iter(range(count))

    async def one_connection() -> None:
        connection = await Connection.open("127.0.0.1", port)
        try:
            for number in numbers:
                await request_one(connection, number)
        finally:
            await connection.close()

    await wait(asyncio.gather(*(one_connection() for _ in range(CONCURRENCY))), timeout=600)


def traced_by_others() -> int:
    """Bytes traced now, leaving out what this file allocated (its tallies and weakrefs)."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, __file__)])
    return sum(stat.size for stat in snapshot.statistics("filename"))


class Tally:
    """Counts calls per (callback, request id); safe to bump from threads."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()

    def bump(self, name: str, number: int) -> None:
        with self._lock:
            self.counts[name, number] += 1

    def of(self, name: str) -> Counter[int]:
        with self._lock:
            return Counter({n: c for (kind, n), c in self.counts.items() if kind == name})


async def test_load_every_callback_runs_exactly_once_and_nothing_is_kept(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """20,000 requests at concurrency 100, each with one request callback and two post-response
    callbacks (async and sync): each ran once, nothing logged, nothing leaked."""
    caplog.set_level(logging.INFO)
    tally = Tally()
    contexts: list[weakref.ref[Any]] = []

    async def stamp(response: Response) -> Response:
        response.headers["X-Number"] = str(g.number)
        tally.bump("request", g.number)
        return response

    async def async_job(number: int) -> None:
        assert g.number == number == int(request.view_args["number"])  # type: ignore[index]
        tally.bump("async", number)

    def sync_job(number: int) -> None:
        assert g.number == number
        tally.bump("sync", number)

    @app.get("/work/<int:number>")
    async def work(number: int) -> str:
        g.number = number
        contexts.append(weakref.ref(request._get_current_object()))  # type: ignore[attr-defined]
        contexts.append(weakref.ref(g._get_current_object()))
        after_this_request(stamp)
        after_this_response(async_job, number)
        after_this_response(sync_job, number)
        return f"ok {number}"

    async def request_one(connection: Connection, number: int) -> None:
        status, body = await connection.get(f"/work/{number}")
        assert (status, body) == (200, f"ok {number}".encode())

    async with running(app, keep_alive_timeout=0.5) as url:
        port = port_of(url)
        await drive(port, 200, request_one)  # Warm up: imports, caches, pool threads.
        await deferred.join(timeout=10)
        await wait(until(lambda: connections_open() == 0))
        tally.counts.clear()
        contexts.clear()
        gc.collect()
        tracemalloc.start()
        try:
            start = traced_by_others()
            await drive(port, REQUESTS, request_one)
            await deferred.join(timeout=60)
            await wait(until(lambda: connections_open() == 0))
            gc.collect()
            alive = sum(ref() is not None for ref in contexts)
            end = traced_by_others()
        finally:
            tracemalloc.stop()
        stats = deferred.stats()

    print(
        f"\nload: {REQUESTS} requests at concurrency {CONCURRENCY}, {stats.scheduled} jobs "
        f"scheduled, {stats.succeeded} succeeded; traced memory {end - start:+,} B after join"
    )
    every = Counter(range(REQUESTS))
    assert tally.of("request") == every
    assert tally.of("async") == every
    assert tally.of("sync") == every
    assert alive == 0
    assert end - start < 1024 * 1024, f"traced memory grew by {end - start} bytes"
    assert add_up(stats)
    assert (stats.scheduled, stats.succeeded) == (2 * (REQUESTS + 200),) * 2
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


class InjectedError(Exception):
    """Raised on purpose by the faults test."""


async def test_faults_are_each_logged_and_counted_once_and_the_server_keeps_answering(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """The same load with 10% of callbacks raising, 5% hanging past the timeout and 10% of
    clients leaving mid-stream: every fault is logged once and counted once."""
    app.config["QUART_DEFERRED_TASK_TIMEOUT"] = 0.1
    rng = random.Random(20261121)
    # Per request: "stream" (the client leaves mid-stream) or a fault for its callbacks.
    plan = [
        rng.choices(["fine", "raise", "hang", "stream"], [75, 10, 5, 10])[0]
        for _ in range(REQUESTS)
    ]
    tally = Tally()
    forever = asyncio.Event()

    async def async_job(number: int, fault: str) -> None:
        tally.bump("async", number)
        if fault == "raise":
            raise InjectedError(number)
        if fault == "hang":
            await forever.wait()

    def sync_job(number: int, fault: str) -> None:
        tally.bump("sync", number)
        if fault == "raise":
            raise InjectedError(number)

    @app.get("/work/<int:number>")
    async def work(number: int) -> str:
        fault = plan[number]
        after_this_response(async_job, number, fault)
        after_this_response(sync_job, number, "raise" if fault == "raise" else "fine")
        return f"ok {number}"

    @app.get("/stream/<int:number>")
    async def stream(number: int) -> Response:
        after_this_response(tally.bump, "success", number, when="success")
        after_this_response(tally.bump, "failure", number, when="failure")

        async def body() -> Any:
            for _ in range(3):
                yield b"x" * 1000
            await forever.wait()  # Until the client leaves.

        return Response(body())

    async def request_one(connection: Connection, number: int) -> None:
        if plan[number] != "stream":
            status, body = await connection.get(f"/work/{number}")
            assert (status, body) == (200, f"ok {number}".encode())
            return
        # Leave at a random point of the response: in its head or anywhere in its body.
        leaver = await Connection.open("127.0.0.1", connection.port)
        leaver.writer.write(f"GET /stream/{number} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        wanted, received = rng.randint(1, 3000), 0
        while received < wanted:
            received += len(await leaver.reader.read(wanted - received))
        leaver.writer.transport.abort()

    async with running(app) as url:
        port = port_of(url)
        await drive(port, REQUESTS, request_one)
        streams = plan.count("stream")
        await wait(until(lambda: sum(tally.of("failure").values()) == streams), timeout=30)
        await deferred.join(timeout=60)
        async with await Connection.open("127.0.0.1", port) as connection:
            assert await connection.get("/work/0") == (200, b"ok 0")  # Still answering.
        await deferred.join(timeout=10)
        stats = deferred.stats()

    def numbers(fault: str) -> set[int]:
        return {n for n, planned in enumerate(plan) if planned == fault}

    print(
        f"\nfaults: {REQUESTS} requests; {len(numbers('raise'))} raising in both jobs, "
        f"{len(numbers('hang'))} hanging, {streams} clients gone mid-stream; {stats}"
    )

    served = numbers("fine") | numbers("raise") | numbers("hang")
    assert tally.of("async") == Counter(served | {0})
    assert tally.of("sync") == Counter(served | {0})
    assert tally.of("success") == Counter()
    assert tally.of("failure") == Counter(numbers("stream"))

    raised = [
        r.exc_info[1]
        for r in caplog.records
        if r.exc_info and isinstance(r.exc_info[1], InjectedError)
    ]
    assert sorted(e.args[0] for e in raised) == sorted(2 * list(numbers("raise")))
    timeouts = [r for r in caplog.records if "timed out" in r.getMessage()]
    timed_out = [int(r.__dict__["deferred_request"].rsplit("/", 1)[1]) for r in timeouts]
    assert sorted(timed_out) == sorted(numbers("hang"))

    assert add_up(stats)
    assert stats.failed == 2 * len(numbers("raise"))
    assert stats.timed_out == len(numbers("hang"))
    assert stats.skipped == streams
    assert stats.waiting == stats.running == stats.cancelled == 0


async def test_blocking_sync_callbacks_do_not_freeze_the_app(
    app: Quart, deferred: QuartDeferred
) -> None:
    """100 plain callbacks block (more than the threads there are): async and plain def
    views still answer at once, and the event loop keeps its pace."""
    release = threading.Event()
    started = Tally()

    def blocks(number: int) -> None:
        started.bump("blocking", number)
        release.wait(1.0)

    @app.get("/block/<int:number>")
    async def block(number: int) -> str:
        after_this_response(blocks, number)
        return "ok"

    @app.get("/health")
    async def health() -> str:
        return "ok"

    @app.get("/health-sync")
    def health_sync() -> str:  # A plain view: needs one of Quart's run_sync threads.
        return "ok"

    lag = 0.0

    async def measure_lag() -> None:
        nonlocal lag
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(0.005)
            lag = max(lag, time.perf_counter() - asked - 0.005)

    # The earlier tests' garbage (tracebacks, frames) would otherwise be
    # collected in one ~100 ms pause in the middle of the measurement.
    gc.collect()
    async with running(app) as url:
        port = port_of(url)
        ticker = asyncio.create_task(measure_lag())
        try:
            async with await Connection.open("127.0.0.1", port) as connection:
                for number in range(100):
                    assert await connection.get(f"/block/{number}") == (200, b"ok")
                threads = app.config["QUART_DEFERRED_THREADS"]
                await wait(until(lambda: len(started.counts) == threads))
                timings = []
                for path in ["/health", "/health-sync"] * 5:
                    asked = time.perf_counter()
                    assert await connection.get(path) == (200, b"ok")
                    timings.append(time.perf_counter() - asked)
            assert deferred.stats().running + deferred.stats().waiting == 100
        finally:
            release.set()
            ticker.cancel()
        await deferred.join(timeout=30)
    print(
        f"\nblocking: slowest health check {max(timings) * 1000:.1f} ms, "
        f"loop lag {lag * 1000:.1f} ms"
    )
    assert max(timings) < 0.1, f"slowest health check {max(timings):.3f}s"
    assert lag < 0.1, f"event loop lag {lag:.3f}s"
    assert deferred.stats().succeeded == 100


async def test_isolation_every_callback_sees_its_own_request_g_and_session(
    app: Quart, deferred: QuartDeferred
) -> None:
    """Half of RELIABILITY_REQUESTS (10,000) in flight at once, each with its own user in g and
    the session."""
    count = REQUESTS // 2  # 10,000 by default.
    all_in = asyncio.Event()
    arrived = 0
    seen: dict[int, tuple[Any, ...]] = {}

    async def check(user: int) -> None:
        await asyncio.sleep(0)  # Let other callbacks interleave.
        seen[user] = (request.args["user"], g.user, session["user"])

    @app.get("/me")
    async def me() -> str:
        nonlocal arrived
        user = int(request.args["user"])
        g.user = user
        session["user"] = user
        after_this_response(check, user)
        arrived += 1
        if arrived == count:
            all_in.set()
        await all_in.wait()  # Every request is in flight before any answers.
        return str(user)

    client = app.test_client()
    replies = await wait(
        asyncio.gather(*(client.get("/me", query_string={"user": n}) for n in range(count))),
        timeout=120,
    )
    await deferred.join(timeout=30)
    assert [await reply.get_data(as_text=True) for reply in replies] == [
        str(n) for n in range(count)
    ]
    assert seen == {n: (str(n), n, n) for n in range(count)}
