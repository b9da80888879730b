"""The app the durable-task tests serve with hypercorn in a subprocess, killed and restarted.

Its tasks append a line to the file named by ``RAN_FILE`` (one ``write`` on a
file opened for appending: lines from two processes never interleave):
``<what> <request id> <job id> <attempt> <pid>``. The journal is the one
``JOURNAL`` names; ``TASK_SECONDS`` is how long ``/slow`` tasks take.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from quart import Quart

from quart_deferred import after_this_response, current_job, enqueue_after_response, QuartDeferred

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")
logging.getLogger("hypercorn").setLevel(logging.WARNING)

app = Quart(__name__)
deferred = QuartDeferred(
    app,
    journal=os.environ["JOURNAL"],
    lease=float(os.environ.get("LEASE", "30")),
    shutdown_timeout=float(os.environ.get("SHUTDOWN_TIMEOUT", "1")),
)
RAN_FILE = os.environ["RAN_FILE"]
TASK_SECONDS = float(os.environ.get("TASK_SECONDS", "10"))


def note(what: str, request_id: str) -> None:
    job = current_job()
    line = f"{what} {request_id} {job.id} {job.attempt} {os.getpid()}\n"
    fd = os.open(RAN_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@deferred.task
async def record(request_id: str) -> None:
    await asyncio.sleep(0.02)  # Long enough to be running, or waiting, at a kill.
    note("ran", request_id)


@deferred.task(retries=0)
async def slow(request_id: str) -> None:
    note("started", request_id)
    await asyncio.sleep(TASK_SECONDS)
    note("finished", request_id)


if os.environ.get("REDIS"):  # A Celery task routed to a queue no worker reads: counted there.
    from celery import Celery

    celery_app = Celery("durable_tests", broker=os.environ["REDIS"])
    celery_app.conf.update(
        broker_connection_retry_on_startup=True,
        task_routes={"tests.durable.sent": {"queue": "held"}},
    )

    @celery_app.task(name="tests.durable.sent")  # type: ignore[untyped-decorator]
    def sent(request_id: str) -> None:
        pass


@app.get("/both/<request_id>")
async def both(request_id: str) -> str:
    after_this_response(record, request_id, when="success")
    enqueue_after_response(sent, request_id)
    return f"scheduled {request_id}"


@app.get("/health")
async def health() -> str:
    return "ok"


@app.get("/work/<request_id>")
async def work(request_id: str) -> str:
    after_this_response(record, request_id, when="success")
    return f"scheduled {request_id}"


@app.get("/slow/<request_id>")
async def slow_view(request_id: str) -> str:
    after_this_response(slow, request_id, when="success")
    return f"scheduled {request_id}"
