"""Real hypercorn processes with hostile jobs: the server keeps serving and exits on time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import contextlib
import os
import signal
import socket
import sys
import time

import pytest

from benchmarks.loadgen import Connection

from .conftest import wait

SHUTDOWN_TIMEOUT = 1.0
MARGIN = 1.0  # What the issue allows past the drain: hypercorn's close and process exit.


class Served:
    """``tests.apps.hostile:app`` under hypercorn in a subprocess, its output collected."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode().rstrip())
            self._changed.set()

    async def saw(self, text: str) -> None:
        """Wait until a line of output contains *text*."""
        while not any(text in line for line in self.lines):
            self._changed.clear()
            await self._changed.wait()

    async def get(self, path: str) -> tuple[int, bytes]:
        connection = await Connection.open("127.0.0.1", self.port)
        try:
            return await connection.get(path)
        finally:
            connection.writer.close()

    async def stop(self) -> float:
        """SIGTERM, then the seconds until the process had exited."""
        self.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await wait(self.process.wait(), timeout=30)
        took = time.monotonic() - signalled
        await wait(self._reader)
        return took

    async def finished(self) -> None:
        """Wait until all the output has been read, so the pipe's transport is closed."""
        await self._reader

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(name="served")
async def _served() -> AsyncIterator[Served]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hypercorn",
        f"--bind=fd://{sock.fileno()}",
        "--graceful-timeout=1",
        "tests.apps.hostile:app",
        pass_fds=[sock.fileno()],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)},
        start_new_session=True,  # Hypercorn's worker process too can be killed as one group.
    )
    sock.close()
    served = Served(process, port)
    try:
        await wait(served.saw("Running on"), timeout=30)
        yield served
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await wait(process.wait(), timeout=30)
        await wait(served.finished(), timeout=30)  # Read to the end: the pipe closes.


@pytest.mark.parametrize("kind", ["system_exit", "plain_keyboard_interrupt"])
async def test_a_job_raising_systemexit_or_keyboardinterrupt_does_not_stop_the_server(
    served: Served, kind: str
) -> None:
    assert await served.get(f"/job/{kind}") == (200, b"ok")
    await wait(served.saw(f"{kind} for GET /job/{kind} failed"))
    assert await served.get("/health") == (200, b"ok")  # Still serving.
    took = await served.stop()
    assert served.process.returncode == 0
    assert "Cancelled" not in served.output
    assert took < SHUTDOWN_TIMEOUT + MARGIN


async def test_a_non_awaiting_chain_leaves_the_server_answering_and_sigterm_stops_it(
    served: Served,
) -> None:
    assert await served.get("/job/chain") == (200, b"ok")
    await wait(served.saw("started chain"))
    slowest = 0.0
    for _ in range(20):
        began = time.monotonic()
        assert await wait(served.get("/health"), timeout=5) == (200, b"ok")
        slowest = max(slowest, time.monotonic() - began)
    took = await served.stop()
    print(f"\nchain: slowest /health {slowest * 1000:.1f} ms; exit {took:.2f}s after SIGTERM")
    assert slowest < 0.1, f"/health took {slowest:.3f}s while the chain ran"
    assert took < SHUTDOWN_TIMEOUT + MARGIN, f"exit took {took:.2f}s after SIGTERM"


@pytest.mark.parametrize(
    ("kind", "logged"),
    [
        (
            "swallows_cancellation",
            "swallows_cancellation for GET /job/swallows_cancellation "
            "ignored its cancellation at shutdown",
        ),
        (
            "blocks_forever",
            "blocks_forever for GET /job/blocks_forever is a plain function "
            "still running on its thread",
        ),
        ("sleeps_3s", "sleeps_3s for GET /job/sleeps_3s is a plain function still running"),
    ],
)
async def test_the_process_exits_on_time_whatever_the_job_does(
    served: Served, kind: str, logged: str
) -> None:
    """SIGTERM with the job still running: the exit comes within the drain plus a margin,
    and the job that is still alive is named in the log."""
    assert await served.get(f"/job/{kind}") == (200, b"ok")
    await wait(served.saw(f"started {kind}"))
    took = await served.stop()
    assert took < SHUTDOWN_TIMEOUT + MARGIN, f"exit took {took:.2f}s after SIGTERM"
    assert logged in served.output, served.output[-2000:]
    print(f"\nexit with {kind}: {took:.2f}s after SIGTERM (drain {SHUTDOWN_TIMEOUT}s)")
