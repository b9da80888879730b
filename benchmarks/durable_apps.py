"""The apps of the durable-task benchmark, served by hypercorn (imported by name).

``durable_memory`` schedules one in-memory job per request, ``durable_journal``
one durable task (its journal is the file ``BENCH_JOURNAL`` names), and
``celery_delay`` calls a Celery task's ``delay()`` inside the view (the usual
alternative; its broker is ``BENCH_REDIS``). All three answer ``ok``.
"""

from __future__ import annotations

import os
from typing import Any

from quart import Quart

from quart_deferred import after_this_response, QuartDeferred


async def record(request_id: str) -> None:
    pass


durable_memory = Quart("durable_memory")
_memory_deferred = QuartDeferred(durable_memory)


@durable_memory.get("/")
async def _memory_index() -> str:
    after_this_response(record, "1", when="success")
    return "ok"


durable_journal = Quart("durable_journal")
_journal = os.environ.get("BENCH_JOURNAL")
_deferred = QuartDeferred(
    durable_journal, journal=None if _journal is None else f"sqlite:///{_journal}"
)
durable_record = _deferred.task(record)


@durable_journal.get("/")
async def _journal_index() -> str:
    after_this_response(durable_record, "1", when="success")
    return "ok"


celery_delay = Quart("celery_delay")
_celery_task: Any = None
if os.environ.get("BENCH_REDIS"):
    from celery import Celery

    _celery = Celery("bench", broker=os.environ["BENCH_REDIS"])

    def _celery_record(request_id: str) -> None:
        pass

    _celery_task = _celery.task(name="bench.record")(_celery_record)


@celery_delay.get("/")
async def _celery_index() -> str:
    _celery_task.delay("1")  # Blocking broker I/O in the view, as the usual code does.
    return "ok"
