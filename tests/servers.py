"""Serve an app with real servers on 127.0.0.1: hypercorn in-process, or any in a subprocess."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import contextlib
from contextlib import asynccontextmanager
import logging
import os
import signal
import socket
import sys
import time

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

from benchmarks.loadgen import Connection


@asynccontextmanager
async def running(
    app: Quart,
    *,
    graceful_timeout: float = 5.0,
    keep_alive_timeout: float = 5.0,
    access_log: bool = False,
) -> AsyncIterator[str]:
    """Serve *app* on a free port of 127.0.0.1 for the block; yield its base URL.

    The socket is bound and listening before hypercorn starts, so a client may
    connect at once: the kernel queues it until the server accepts.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = keep_alive_timeout
    config.accesslog = logging.getLogger("hypercorn.access") if access_log else None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=graceful_timeout + 10)


def connections_open() -> int:
    """How many connections the in-process hypercorn still holds.

    Hypercorn lets a connection's task linger for ``keep_alive_timeout``
    after the client has closed it.
    """
    names = (getattr(task.get_coro(), "__qualname__", "") for task in asyncio.all_tasks())
    return sum(name.endswith("_server_callback") for name in names)


class ServerProcess:
    """An ASGI server serving one of ``tests/apps`` in a subprocess, its output collected."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, port: int) -> None:
        self.name = name
        self.process = process
        self.port = port
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._changed.set()

    async def saw(self, text: str) -> None:
        """Wait until a line of output contains *text*."""
        while not any(text in line for line in self.lines):
            self._changed.clear()
            await self._changed.wait()

    async def ready(self) -> None:
        """Wait until ``/health`` answers."""
        while True:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                if await self.get("/health") == (200, b"ok"):
                    return
            if self.process.returncode is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.output}")
            await asyncio.sleep(0.05)

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET *path* on a connection of its own."""
        connection = await Connection.open("127.0.0.1", self.port)
        try:
            return await connection.get(path)
        finally:
            connection.writer.close()

    async def stop(self) -> float:
        """SIGTERM, then the seconds until the process had exited."""
        self.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.wait_for(self.process.wait(), timeout=30)
        took = time.monotonic() - signalled
        await asyncio.wait_for(self._reader, timeout=30)
        return took

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def server_command(server: str, port: int, app: str, *extra: str) -> list[str]:
    """The command line that serves *app* with *server* on 127.0.0.1:*port*."""
    bind = ("--host", "127.0.0.1", "--port", str(port))
    if server == "hypercorn":
        return [sys.executable, "-m", "hypercorn", f"--bind=127.0.0.1:{port}", *extra, app]
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", *bind, "--no-access-log", *extra, app]
    granian = [sys.executable, "-m", "granian", "--interface", "asgi", "--workers", "1"]
    return [*granian, *bind, "--no-access-log", *extra, app]


@asynccontextmanager
async def serving(
    server: str, app: str, *extra: str, env: dict[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    """Serve *app* with *server* in a subprocess for the block, once ``/health`` answers."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    process = await asyncio.create_subprocess_exec(
        *server_command(server, port, app, *extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        start_new_session=True,  # Its worker processes too can be killed as one group.
    )
    served = ServerProcess(server, process, port)
    try:
        await asyncio.wait_for(served.ready(), timeout=60)
        yield served
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.wait_for(process.wait(), timeout=30)
        # Read to the end, so the pipe's transport is closed here, not by the collector.
        await asyncio.wait_for(served._reader, timeout=30)
