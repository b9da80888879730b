"""Serve one benchmark app with hypercorn until SIGTERM: ``python -m benchmarks.serve APP PORT``.

The served instruction counts run this under callgrind, so that only the
server's own instructions are counted, not the load generator's.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config

from . import apps


async def main(name: str, port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await serve(getattr(apps, name), config, shutdown_trigger=stop.wait)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
