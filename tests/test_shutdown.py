"""SIGTERM under load: hypercorn in a subprocess, every scheduled callback accounted for."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time

from benchmarks.loadgen import Connection

from .conftest import wait

SHUTDOWN_TIMEOUT = 1.5
MARGIN = 3.0  # Hypercorn's own graceful close, the workers' unwinding, process exit.


async def test_sigterm_under_load_every_callback_completes_or_is_logged_cancelled() -> None:
    """SIGTERM during load: every callback either completed or was logged as cancelled."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hypercorn",
        f"--bind=fd://{sock.fileno()}",
        "--graceful-timeout=1",
        "tests.apps.shutdown:app",
        pass_fds=[sock.fileno()],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)},
    )
    sock.close()
    assert server.stdout is not None
    lines: list[str] = []
    busy = asyncio.Event()

    async def read_output() -> None:
        assert server.stdout is not None
        async for raw in server.stdout:
            lines.append(raw.decode().rstrip())
            if len(lines) > 600:
                busy.set()

    async def put_load(first: int) -> None:
        # Keep sending until the server stops answering; 50 connections, distinct numbers.
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            async with await Connection.open("127.0.0.1", port) as connection:
                for number in range(first, 10**9, 50):
                    assert await connection.get(f"/work/{number}") == (200, b"ok")

    reader = asyncio.create_task(read_output())
    load = [asyncio.create_task(put_load(first)) for first in range(50)]
    try:
        await wait(busy.wait(), timeout=60)
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await wait(server.wait(), timeout=SHUTDOWN_TIMEOUT + 30)
        took = time.monotonic() - signalled
        await wait(asyncio.gather(*load), timeout=10)
        await wait(reader)
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()

    output = "\n".join(lines)
    scheduled = _numbers(r"^INFO scheduled (\d+)$", output)
    completed = _numbers(r"^INFO completed (\d+)$", output)
    cancelled = _numbers(r"^WARNING Cancelled \S+ for GET /work/(\d+) at shutdown", output)
    assert server.returncode == 0, output[-3000:]
    assert completed and cancelled, "the load should leave work both done and cut short"
    assert completed.isdisjoint(cancelled)
    assert completed | cancelled == scheduled
    assert len(_list(r"^INFO scheduled (\d+)$", output)) == len(scheduled)  # Each number once.
    assert len(_list(r"^INFO completed (\d+)$", output)) == len(completed)  # No job ran twice.
    assert took < SHUTDOWN_TIMEOUT + MARGIN, f"exit took {took:.2f}s after SIGTERM"
    print(
        f"\nshutdown: scheduled {len(scheduled)}, completed {len(completed)}, "
        f"cancelled {len(cancelled)}, exited {took:.2f}s after SIGTERM"
    )


def _list(pattern: str, output: str) -> list[int]:
    return [int(found) for found in re.findall(pattern, output, re.MULTILINE)]


def _numbers(pattern: str, output: str) -> set[int]:
    return set(_list(pattern, output))
