"""Drive an ASGI app in-process, with no sockets: a minimal scope, receive and send."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import time
from typing import Any

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


def scope(path: str = "/", query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "extensions": {},
    }


class Exchange:
    """One request's receive and send; records when the final body went out."""

    __slots__ = ("final_sent_at", "received", "status")

    def __init__(self) -> None:
        self.received = False
        self.status = 0
        self.final_sent_at = 0.0

    async def receive(self) -> dict[str, Any]:
        if not self.received:
            self.received = True
            return _REQUEST
        await asyncio.get_running_loop().create_future()  # Until Quart cancels its receiver.
        raise AssertionError("unreachable")

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif not message.get("more_body", False):
            self.final_sent_at = time.perf_counter()


async def request(app: ASGIApp, path: str = "/", query: bytes = b"") -> Exchange:
    exchange = Exchange()
    await app(scope(path, query), exchange.receive, exchange.send)
    if exchange.status != 200:
        raise RuntimeError(f"{path} answered {exchange.status}")
    return exchange


async def drive(app: ASGIApp, count: int, concurrency: int, path: str = "/") -> None:
    """Send *count* requests to *app*, *concurrency* at a time."""

    async def worker(share: int) -> None:
        for _ in range(share):
            await request(app, path)

    shares = [count // concurrency + (index < count % concurrency) for index in range(concurrency)]
    await asyncio.gather(*(worker(share) for share in shares))
