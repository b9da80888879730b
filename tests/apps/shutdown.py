"""The app the shutdown test serves with hypercorn in a subprocess.

Every line the test counts goes to stdout through logging, whose lock keeps
lines from threads whole: ``scheduled N`` from the view, ``completed N`` from
the job, and the extension's own WARNING lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time

from quart import Quart

from quart_deferred import after_this_response, QuartDeferred

logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(levelname)s %(message)s")
logger = logging.getLogger("shutdown_app")
logger.setLevel(logging.INFO)

app = Quart(__name__)
deferred = QuartDeferred(app, shutdown_timeout=float(os.environ["SHUTDOWN_TIMEOUT"]), threads=2)
chance = random.Random(7)


async def slow(number: int) -> None:
    await asyncio.sleep(chance.uniform(0, 3))
    logger.info("completed %d", number)


def slow_plain(number: int) -> None:
    time.sleep(chance.uniform(0, 0.3))
    logger.info("completed %d", number)


@app.get("/work/<int:number>")
async def work(number: int) -> str:
    after_this_response(slow if number % 4 else slow_plain, number)
    logger.info("scheduled %d", number)
    return "ok"
