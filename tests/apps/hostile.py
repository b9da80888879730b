"""The app the exit tests serve with hypercorn in a subprocess: jobs that misbehave.

Each view schedules one kind of bad job and logs ``started <kind>`` from the
job itself, so the test knows it runs before it sends SIGTERM. Every line
goes to stdout through logging.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from quart import Quart

from quart_deferred import after_this_response, QuartDeferred

logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(levelname)s %(message)s")
logger = logging.getLogger("hostile_app")
logger.setLevel(logging.INFO)

app = Quart(__name__)
deferred = QuartDeferred(app, shutdown_timeout=float(os.environ["SHUTDOWN_TIMEOUT"]), threads=2)


async def system_exit() -> None:
    logger.info("started system_exit")
    raise SystemExit(0)


def plain_keyboard_interrupt() -> None:
    logger.info("started plain_keyboard_interrupt")
    raise KeyboardInterrupt


async def chain() -> None:
    """Reschedules itself for ever, never awaiting."""
    deferred.start_soon(chain)


async def swallows_cancellation() -> None:
    logger.info("started swallows_cancellation")
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            logger.info("swallowed a cancellation")


def blocks_forever() -> None:
    logger.info("started blocks_forever")
    time.sleep(3600)


def sleeps_3s() -> None:
    logger.info("started sleeps_3s")
    time.sleep(3)


JOBS = {
    "system_exit": system_exit,
    "plain_keyboard_interrupt": plain_keyboard_interrupt,
    "swallows_cancellation": swallows_cancellation,
    "blocks_forever": blocks_forever,
    "sleeps_3s": sleeps_3s,
}


@app.get("/health")
async def health() -> str:
    return "ok"


@app.get("/job/<kind>")
async def job(kind: str) -> str:
    if kind == "chain":
        deferred.start_soon(chain)
        logger.info("started chain")
    else:
        after_this_response(JOBS[kind])
    return "ok"
