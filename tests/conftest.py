from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from importlib.metadata import version
from typing import Any, Protocol, TypeVar

import httpx
import pytest
from quart import Quart
from werkzeug.datastructures import Headers

from quart_deferred import Latency, QuartDeferred, Stats

from .servers import running

T = TypeVar("T")

QUART_VERSION = tuple(int(part) for part in version("quart").split(".")[:2])


async def wait(awaitable: Awaitable[T], timeout: float = 5.0) -> T:
    """Await *awaitable*, failing the test (instead of hanging) if it never finishes."""
    return await asyncio.wait_for(awaitable, timeout)


async def until(condition: Callable[[], bool]) -> None:
    """Wait until *condition* holds, checking once per loop pass.

    Only for state that no event announces (the runner's counters, a server
    noticing a disconnect); always wrapped in ``wait()`` so it cannot hang.
    """
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.001)


def counts(stats: Stats) -> Stats:
    """*stats* with the latency figures blanked, to compare the counts alone."""
    return replace(stats, wait=Latency(), duration=Latency())


def add_up(stats: Stats) -> bool:
    """The identity that must hold at every moment."""
    total = stats.waiting + stats.running + stats.succeeded + stats.failed
    return stats.scheduled == total + stats.timed_out + stats.cancelled + stats.kept


@dataclass
class Reply:
    status_code: int
    headers: Headers
    text: str


class Client(Protocol):
    async def get(self, path: str, **kwargs: Any) -> Reply: ...

    async def post(self, path: str, **kwargs: Any) -> Reply: ...


class QuartTestClient:
    """Send requests with Quart's own test client (no sockets)."""

    def __init__(self, app: Quart) -> None:
        self.client = app.test_client()

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self._open("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self._open("POST", path, **kwargs)

    async def _open(self, method: str, path: str, **kwargs: Any) -> Reply:
        response = await self.client.open(path, method=method, **kwargs)
        return Reply(response.status_code, response.headers, await response.get_data(as_text=True))


class HypercornClient:
    """Send requests with httpx to the app served by a real hypercorn on 127.0.0.1."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self._open("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self._open("POST", path, **kwargs)

    async def _open(self, method: str, path: str, **kwargs: Any) -> Reply:
        response = await self.client.request(method, path, **kwargs)
        return Reply(response.status_code, Headers(response.headers.multi_items()), response.text)


@pytest.fixture(name="app")
def _app() -> Quart:
    app = Quart(__name__)
    app.secret_key = "not secret, only for tests"
    QuartDeferred(app)
    return app


@pytest.fixture(name="deferred")
def _deferred(app: Quart) -> QuartDeferred:
    extension: QuartDeferred = app.extensions["quart_deferred"].extension
    return extension


@pytest.fixture(name="client", params=["quart", "hypercorn"])
async def _client(request: pytest.FixtureRequest, app: Quart) -> AsyncIterator[Client]:
    """A client for *app*: Quart's test client, then httpx against a real hypercorn."""
    if request.param == "quart":
        yield QuartTestClient(app)
        return
    # httpx's pool is slow with many connections in one process; 20 is its
    # quickest setting here for the 500-request test.
    limits = httpx.Limits(max_connections=20)
    async with (
        running(app) as url,
        httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http,
    ):
        yield HypercornClient(http)


@pytest.fixture(name="served")
async def _served(app: Quart) -> AsyncIterator[str]:
    """The base URL of *app* served by a real hypercorn on 127.0.0.1."""
    async with running(app) as url:
        yield url
