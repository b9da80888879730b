"""Served throughput: hypercorn (1 worker) under load on 127.0.0.1, bare vs one noop per request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import json
import os
import socket
import subprocess
import sys

from .loadgen import Connection, load
from .report import median, Report

Server = tuple[asyncio.subprocess.Process, int]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _start(app: str) -> Server:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}"),
        f"benchmarks.apps:{app}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    for _ in range(200):  # Up to 10 s for the server to listen.
        try:
            connection = await Connection.open("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        await connection.close()
        return process, port
    process.kill()
    raise RuntimeError(f"hypercorn serving {app} did not start")


async def run(report: Report, *, rounds: int, requests: int, connections: int = 50) -> None:
    servers = {name: await _start(name) for name in ("served_bare", "served_deferred")}
    try:
        times: dict[str, list[float]] = {name: [] for name in servers}
        for _, port in servers.values():  # Warm up.
            await load("127.0.0.1", port, connections=connections, requests=500, path=_path("w"))
        ordered = list(servers.items())
        for round_ in range(rounds * 2):
            for name, (_, port) in ordered if round_ % 2 == 0 else ordered[::-1]:  # A B B A
                times[name].append(
                    await load(
                        "127.0.0.1",
                        port,
                        connections=connections,
                        requests=requests,
                        path=_path(str(round_)),
                    )
                )
            print(f"  served: round {round_ + 1}/{rounds * 2}", file=sys.stderr)
        connection = await Connection.open("127.0.0.1", servers["served_deferred"][1])
        status, body = await connection.get("/_check")
        await connection.close()
    finally:
        for process, _ in servers.values():
            process.terminate()
            await asyncio.wait_for(process.wait(), timeout=30)
    check = json.loads(body)
    ratio = median(
        [b / d for b, d in zip(times["served_bare"], times["served_deferred"], strict=True)]
    )
    bare_rps = requests / median(times["served_bare"])
    expected = rounds * 2 * requests + 500  # The warm-up requests carry ids too.
    exactly_once = status == 200 and check["ids"] == expected and check["ran_more_than_once"] == 0
    report.add(
        "served", "hypercorn, bare Quart", f"{bare_rps:,.0f} req/s ({connections} connections)"
    )
    report.add(
        "served",
        "hypercorn, one post-response noop per request",
        f"x{ratio:.3f}; work ran once for {check['ids']:,} of {expected:,} requests",
        "≥ x0.97, each exactly once",
        ratio >= 0.97 and exactly_once,
    )


def _path(prefix: str) -> Callable[[int], str]:
    return lambda index: f"/?id={prefix}-{index}"
