"""Served throughput: hypercorn (1 worker) under load on 127.0.0.1, bare vs one noop per request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import json
import os
import socket
import subprocess
import sys
import time

from .loadgen import Connection, id_paths, load
from .report import median, Report

Server = tuple[asyncio.subprocess.Process, int]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_server(command: Callable[[int], list[str]], *, timeout: float = 10.0) -> Server:
    """Start ``command(port)`` for a free port; return once it accepts connections."""
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        *command(port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.getcwd(), "PYTHONHASHSEED": "0"},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = await Connection.open("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        await connection.close()
        return process, port
    process.kill()
    raise RuntimeError(f"{' '.join(command(port))} did not start within {timeout}s")


async def _start(app: str) -> Server:
    return await start_server(
        lambda port: (
            [sys.executable, "-m", "hypercorn", f"--bind=127.0.0.1:{port}"]
            + [f"benchmarks.apps:{app}"]
        )
    )


async def run(report: Report, *, rounds: int, requests: int, connections: int = 50) -> None:
    servers = {name: await _start(name) for name in ("served_bare", "served_deferred")}
    try:
        times: dict[str, list[float]] = {name: [] for name in servers}
        cpus: dict[str, list[float]] = {name: [] for name in servers}
        for _, port in servers.values():  # Warm up.
            await load("127.0.0.1", port, connections=connections, requests=500, path=id_paths("w"))
        ordered = list(servers.items())
        for round_ in range(rounds * 2):
            for name, (process, port) in ordered if round_ % 2 == 0 else ordered[::-1]:  # A B B A
                cpu = _cpu_seconds(process.pid)
                times[name].append(
                    await load(
                        "127.0.0.1",
                        port,
                        connections=connections,
                        requests=requests,
                        path=id_paths(round_),
                    )
                )
                cpus[name].append((_cpu_seconds(process.pid) - cpu) / requests * 1e6)
            print(f"  served: round {round_ + 1}/{rounds * 2}", file=sys.stderr)
        connection = await Connection.open("127.0.0.1", servers["served_deferred"][1])
        status, body = await connection.get("/_check")
        await connection.close()
    finally:
        for process, _ in servers.values():
            process.terminate()
            await asyncio.wait_for(process.wait(), timeout=30)
    check = json.loads(body)
    bare, ours = "served_bare", "served_deferred"
    ratio = median([b / d for b, d in zip(times[bare], times[ours], strict=True)])
    cpu_ratio = median([b / d for b, d in zip(cpus[bare], cpus[ours], strict=True)])
    bare_rps = requests / median(times[bare])
    expected = rounds * 2 * requests + 500  # The warm-up requests carry ids too.
    exactly_once = status == 200 and check["ids"] == expected and check["ran_more_than_once"] == 0
    report.add(
        "served",
        "hypercorn, bare Quart",
        f"{bare_rps:,.0f} req/s ({connections} connections), "
        f"server {median(cpus[bare]):,.0f} µs CPU per request",
    )
    report.add(
        "served",
        "hypercorn, one post-response noop per request",
        f"x{ratio:.3f} (server CPU per request: x{cpu_ratio:.3f}); work ran once for "
        f"{check['ids']:,} of {expected:,} requests",
        "≥ x0.97, each exactly once",
        ratio >= 0.97 and exactly_once,
    )


def _cpu_seconds(pid: int) -> float:
    """CPU time of process *pid* and its children (hypercorn serves from a child)."""
    ticks, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending += [int(child) for child in children.read().split()]
        except (FileNotFoundError, ProcessLookupError):  # Gone meanwhile, or not Linux.
            continue
    return ticks / os.sysconf("SC_CLK_TCK")
