"""A signup view that hands the welcome e-mail to Celery once the response has gone out.

From the repository root, with Redis, a Celery worker and the app (see the README)::

    redis-server --port 6379 --save "" &
    celery -A examples.celery_signup:celery_app worker --pool=solo --loglevel=INFO &
    hypercorn examples.celery_signup:app
    curl -X POST -d email=ada@example.com http://127.0.0.1:8000/signup

The job is sent only after the 201 has been sent, so the worker never sees a
signup the client did not get; a signup that fails (the 400 below) sends nothing.
"""

from __future__ import annotations

import logging
import os

from celery import Celery
from quart import Quart, request

from quart_deferred import enqueue_after_response, QuartDeferred

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

celery_app = Celery("signup", broker=BROKER_URL)
celery_app.conf.broker_connection_retry_on_startup = True
logger = logging.getLogger("signup")


@celery_app.task(name="signup.send_welcome_mail")  # type: ignore[untyped-decorator]
def send_welcome_mail(address: str) -> None:
    logger.warning("welcome e-mail sent to %s", address)  # Stands in for the SMTP call.


app = Quart(__name__)
deferred = QuartDeferred(app)


@app.post("/signup")
async def signup() -> tuple[str, int]:
    address = (await request.form).get("email", "")
    if "@" not in address:
        return "Please give an e-mail address.\n", 400  # A failure: nothing is enqueued.
    enqueue_after_response(send_welcome_mail, address)
    return f"Welcome, {address}!\n", 201
