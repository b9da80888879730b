"""Serve an app with a real hypercorn on 127.0.0.1, for tests that need real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
import logging
import socket

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart


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
