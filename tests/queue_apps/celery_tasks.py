"""The Celery app of the queue tests; its worker runs in a subprocess.

Each task pushes what it got to a Redis list, where the test reads it.
"""

from __future__ import annotations

import os

from celery import Celery
import redis

REDIS_URL = os.environ.get("QUART_DEFERRED_TEST_REDIS", "redis://127.0.0.1:6379/0")

celery_app = Celery("quart_deferred_tests", broker=REDIS_URL)
celery_app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_routes={"tests.celery.held": {"queue": "held"}},
)


@celery_app.task(name="tests.celery.welcome_mail")  # type: ignore[untyped-decorator]
def welcome_mail(address: str, *, subject: str) -> None:
    redis.Redis.from_url(REDIS_URL).rpush("celery:done", f"{address} {subject}")


@celery_app.task(name="tests.celery.held")  # type: ignore[untyped-decorator]
def held(address: str) -> None:
    """Routed to a queue no worker listens to, so the test can count what was sent."""
