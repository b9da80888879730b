"""Durable tasks: served throughput and time to the last byte, journal purge and replay.

Served: hypercorn (1 worker) under 50 keep-alive connections, one durable
task per request against one in-memory job per request, A B B A rounds; a
Celery ``delay()`` inside the view as the reference row (when redis-server is
installed). Then, in-process, purging 100,000 finished jobs and the time from
startup to the first of 10,000 left jobs running.
"""

from __future__ import annotations

import asyncio
from contextlib import closing
import functools
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from quart import Quart

from quart_deferred import QuartDeferred
from quart_deferred._sqlite_journal import SQLiteJournal

from .loadgen import Connection
from .report import median, percentile, Report
from .served import _free_port, start_server

PACE = 0.1  # Seconds between two requests of one connection in the steady-load row.


async def _timed(
    port: int, *, connections: int, requests: int, every: float = 0.0
) -> tuple[float, list[float]]:
    """Send *requests* GETs over *connections*; return the seconds taken and each one's time.

    With *every*, each connection sends at most one request per *every* seconds (a load
    the server keeps up with); without, as fast as the server answers.
    """
    opened = [await Connection.open("127.0.0.1", port) for _ in range(connections)]
    counter = iter(range(requests))
    each: list[float] = []

    async def run(number: int, connection: Connection) -> None:
        await asyncio.sleep(every * number / connections)  # Spread out, not in bursts.
        for _ in counter:
            sent = time.perf_counter()
            status, body = await connection.get("/")
            each.append(time.perf_counter() - sent)
            if (status, body) != (200, b"ok"):
                raise RuntimeError(f"answered {status} {body!r}")
            if every:
                await asyncio.sleep(max(0.0, every - (time.perf_counter() - sent)))

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*map(run, range(connections), opened)), timeout=300)
    elapsed = time.perf_counter() - started
    for connection in opened:
        await connection.close()
    return elapsed, each


def _hypercorn(name: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hypercorn",
        f"--bind=127.0.0.1:{port}",
        f"benchmarks.durable_apps:{name}",
    ]


async def run(report: Report, *, rounds: int, requests: int, connections: int = 50) -> None:
    folder = tempfile.mkdtemp(prefix="quart-deferred-bench-")
    os.environ["BENCH_JOURNAL"] = os.path.join(folder, "journal.sqlite3")
    redis = _redis()
    names = ["durable_memory", "durable_journal"] + (["celery_delay"] if redis else [])
    servers = {}
    try:
        for name in names:
            servers[name] = await start_server(functools.partial(_hypercorn, name))
        times: dict[str, list[float]] = {name: [] for name in servers}
        latencies: dict[str, list[float]] = {name: [] for name in servers}
        paced: dict[str, list[float]] = {name: [] for name in servers}
        for _, port in servers.values():  # Warm up, at the paced load.
            await _timed(port, connections=connections, requests=requests // 5, every=PACE)
        ordered = list(servers.items())
        # At a load every server keeps up with (the steady state the p99 goal is about),
        # first: right after the rounds as fast as served, a server is still catching up.
        for round_ in range(rounds * 2):
            for name, (_, port) in ordered if round_ % 2 == 0 else ordered[::-1]:
                _, each = await _timed(
                    port, connections=connections, requests=requests // 5, every=PACE
                )
                paced[name] += each
            print(f"  durable: paced round {round_ + 1}/{rounds * 2}", file=sys.stderr)
        for round_ in range(rounds * 2):
            for name, (_, port) in ordered if round_ % 2 == 0 else ordered[::-1]:
                took, each = await _timed(port, connections=connections, requests=requests)
                times[name].append(took)
                latencies[name] += each
            print(f"  durable: round {round_ + 1}/{rounds * 2}", file=sys.stderr)
    finally:
        for process, _ in servers.values():
            process.terminate()
            await asyncio.wait_for(process.wait(), timeout=30)
        if redis is not None:
            redis.terminate()
            redis.wait(timeout=10)
    memory, journal = "durable_memory", "durable_journal"
    rps = {name: requests / median(values) for name, values in times.items()}
    ratio = median([m / j for m, j in zip(times[memory], times[journal], strict=True)])
    p99 = {name: percentile(values, 0.99) * 1000 for name, values in latencies.items()}
    report.add("durable", "one in-memory job per request", f"{rps[memory]:,.0f} req/s")
    report.add(
        "durable",
        "one durable task per request (SQLite journal)",
        f"x{ratio:.3f} of the in-memory job's throughput",
        "≥ x0.90",
        ratio >= 0.90,
    )
    if "celery_delay" in rps:
        report.add(
            "durable", "Celery delay() in the view (reference)", f"{rps['celery_delay']:,.0f} req/s"
        )
    steady = {name: percentile(values, 0.99) * 1000 for name, values in paced.items()}
    report.add(
        "durable",
        f"time to the last byte, p99, {connections} connections at {connections / PACE:,.0f} req/s",
        f"durable {steady[journal]:.2f} ms, in-memory {steady[memory]:.2f} ms "
        f"(+{steady[journal] - steady[memory]:.2f} ms)",
        "≤ +2 ms",
        steady[journal] - steady[memory] <= 2.0,
    )
    report.add(
        "durable",
        f"time to the last byte, p99, {connections} connections as fast as served",
        f"durable {p99[journal]:.2f} ms, in-memory {p99[memory]:.2f} ms "
        f"(+{p99[journal] - p99[memory]:.2f} ms)",
    )
    purge = _purge(folder, 100_000)
    report.add("durable", "purge 100,000 finished jobs", f"{purge:.2f} s", "< 10 s", purge < 10)
    replay = await _replay(folder, 10_000)
    report.add(
        "durable",
        "replay of 10,000 left jobs: startup to the first one running",
        f"{replay * 1000:.0f} ms",
        "≤ 1 s",
        replay <= 1.0,
    )
    shutil.rmtree(folder, ignore_errors=True)


def _redis() -> subprocess.Popen[bytes] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    os.environ["BENCH_REDIS"] = f"redis://127.0.0.1:{port}/0"
    return process


def _fill(path: str, count: int, state: str, name: str) -> None:
    SQLiteJournal(f"sqlite:///{path}").connect().close()  # The schema.
    now = time.time() - 3600
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.executemany(
            "INSERT INTO quart_deferred_jobs (id, name, arguments, origin, created, not_before, "
            "attempt, state, updated) VALUES (?, ?, '[[\"1\"], {}]', 'GET /', ?, ?, 0, ?, ?)",
            [(f"{state}-{n}", name, now, now, state, now) for n in range(count)],
        )


def _purge(folder: str, count: int) -> float:
    path = os.path.join(folder, "purge.sqlite3")
    _fill(path, count, "done", "benchmarks.durable_apps.record")
    started = time.perf_counter()
    removed = SQLiteJournal(f"sqlite:///{path}").purge(("done",), time.time())
    took = time.perf_counter() - started
    assert removed == count, removed
    return took


async def _replay(folder: str, count: int) -> float:
    path = os.path.join(folder, "replay.sqlite3")
    _fill(path, count, "waiting", "bench.replayed")
    app = Quart("replay")
    deferred = QuartDeferred(app, journal=f"sqlite:///{path}")
    first: list[float] = []

    async def replayed(value: str) -> None:
        if not first:
            first.append(time.perf_counter())

    deferred.task(name="bench.replayed")(replayed)
    started = time.perf_counter()
    async with app.test_app():
        await deferred.join(timeout=120)
    return first[0] - started
