"""A bounded HTTP/1.1 keep-alive load generator for 127.0.0.1 (httpx is too slow for load)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import time


class Connection:
    """One keep-alive connection that sends GET requests one after another."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.port = port

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, port)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length:")
        )
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def load(
    host: str, port: int, *, connections: int, requests: int, path: Callable[[int], str]
) -> float:
    """Send *requests* GETs over *connections* keep-alive connections; return the seconds taken.

    Every response must be a 200 with body ``ok``; anything else raises.
    """
    opened = [await Connection.open(host, port) for _ in range(connections)]
    counter = iter(range(requests))

    async def run(connection: Connection) -> None:
        for index in counter:
            status, body = await connection.get(path(index))
            if (status, body) != (200, b"ok"):
                raise RuntimeError(f"request {index} answered {status} {body!r}")

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(run(c) for c in opened)), timeout=300)
    elapsed = time.perf_counter() - started
    for connection in opened:
        await connection.close()
    return elapsed


def id_paths(prefix: object) -> Callable[[int], str]:
    """Paths ``/?id=PREFIX-N``: every request of a load run carries its own id."""
    return lambda index: f"/?id={prefix}-{index}"
