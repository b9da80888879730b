"""enqueue_after_response with a journal: sends kept until the broker has them (real Redis)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
import sqlite3
import time

import pytest
from quart import Quart
import redis

from quart_deferred import enqueue_after_response, QuartDeferred

from .conftest import counts, wait
from .test_queues import _task_on, ADAPTERS, RedisServer


def sent_ids(client: redis.Redis, adapter: str) -> list[str]:
    """The message ids of what the broker holds for the ``lost`` task (no worker takes it)."""
    if adapter == "celery":
        messages = [json.loads(raw) for raw in client.lrange("celery", 0, -1)]
        return [message["headers"]["id"] for message in messages]
    return [json.loads(raw)["task_id"] for raw in client.lrange("lost", 0, -1)]


@pytest.mark.reliability
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_broker_outage_loses_no_send(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, adapter: str
) -> None:
    """Redis stopped for 10 s under requests, then started: every send arrives, with its job's
    id as the message id; every request was answered meanwhile; nothing is logged as lost."""
    app = Quart(__name__)
    deferred = QuartDeferred(app, journal=f"sqlite:///{tmp_path / 'journal.sqlite3'}")
    server = RedisServer()
    task, broker = _task_on(adapter, server.url)
    if broker is not None:
        await broker.startup()
    job_ids: list[str] = []

    @app.post("/signup/<int:number>")
    async def signup(number: int) -> tuple[str, int]:
        enqueue_after_response(task, f"user{number}@example.com")
        return "created", 201

    async with app.test_app():
        client = app.test_client()
        assert (await client.post("/signup/0")).status_code == 201
        await deferred.join(timeout=10)
        assert len(sent_ids(server.client, adapter)) == 1
        server.stop()
        stopped = time.monotonic()
        answered = 1
        while time.monotonic() - stopped < 10:  # The outage: requests keep coming.
            reply = await wait(client.post(f"/signup/{answered}"))
            assert reply.status_code == 201
            answered += 1
            await asyncio.sleep(0.2)
        server = RedisServer(server.port)  # Back, on the same port, empty.
        await deferred.join(timeout=60)  # Until every kept send has reached the broker.
        ids = sent_ids(server.client, adapter)
    with sqlite3.connect(tmp_path / "journal.sqlite3") as connection:  # Written by now.
        job_ids = [row[0] for row in connection.execute(
            "SELECT id FROM quart_deferred_jobs WHERE state = 'done' ORDER BY created"
        )]  # fmt: skip
    if broker is not None:
        await broker.shutdown()
    server.stop()
    print(f"\n{answered} sends, {len(ids) - len(set(ids))} arrived twice (the same id)")
    assert answered > 40
    assert len(job_ids) == answered
    # Every send but the first's (in the Redis that was stopped) arrived; one that timed out
    # while the client reconnected may arrive twice, with the same id.
    assert set(ids) == set(job_ids[1:])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert counts(deferred.stats()).failed > 0  # Attempts failed during the outage, and
    retried = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert retried and all("enqueue(tests." in r.getMessage() for r in retried)  # were retried.
