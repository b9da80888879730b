"""The taskiq broker of the queue tests; its worker runs in a subprocess.

Each task pushes what it got to a Redis list, where the test reads it.
"""

from __future__ import annotations

import os

import redis.asyncio
from taskiq_redis import ListQueueBroker

REDIS_URL = os.environ.get("QUART_DEFERRED_TEST_REDIS", "redis://127.0.0.1:6379/0")

broker = ListQueueBroker(REDIS_URL, queue_name="taskiq")
held_broker = ListQueueBroker(REDIS_URL, queue_name="taskiq:held")  # No worker listens.


@broker.task(task_name="tests.taskiq.welcome_mail")
async def welcome_mail(address: str, *, subject: str) -> None:
    async with redis.asyncio.Redis.from_url(REDIS_URL) as client:
        await client.rpush("taskiq:done", f"{address} {subject}")


@held_broker.task(task_name="tests.taskiq.held")
async def held(address: str) -> None:
    """Sent to a queue no worker listens to, so the test can count what was sent."""
