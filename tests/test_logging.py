"""Every line the package logs comes from ``quart_deferred`` and carries structured fields."""

from __future__ import annotations

import asyncio
import logging

import pytest
from quart import Quart

from quart_deferred import after_this_response

from .conftest import wait

FIELDS = ("deferred_callback", "deferred_request", "deferred_method", "deferred_path")


async def test_each_outcome_is_logged_with_callback_method_and_path(
    app: Quart, caplog: pytest.LogCaptureFixture
) -> None:
    """Failure, timeout, skip, crowding and cancellation at shutdown: one line each, with
    fields that standard logging configuration can format."""
    caplog.set_level(logging.DEBUG, logger="quart_deferred")
    app.config.update(
        QUART_DEFERRED_TASK_TIMEOUT=0.05,
        QUART_DEFERRED_SHUTDOWN_TIMEOUT=0,
        QUART_DEFERRED_MAX_CONCURRENCY=1,
        QUART_DEFERRED_MAX_PENDING=3,
    )
    blocked = asyncio.Event()

    async def fails() -> None:
        raise RuntimeError("injected")

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def blocks() -> None:
        blocked.set()
        await asyncio.Event().wait()

    async def never() -> None:
        pass

    @app.post("/orders/<kind>")
    async def order(kind: str) -> tuple[str, int]:
        job = {"fails": fails, "hangs": hangs, "blocks": blocks, "never": never}[kind]
        after_this_response(job)
        after_this_response(never, when="failure")  # Skipped: the response succeeds.
        return kind, 200

    async with app.test_app() as test_app:
        client = test_app.test_client()
        for kind in ("fails", "hangs"):
            await client.post(f"/orders/{kind}")
        await client.post("/orders/blocks")
        await wait(blocked.wait())
        await client.post("/orders/never")
        # One waits behind the blocked job; the second request's two registrations
        # then make three jobs not yet started: past 80% of 3.
        await client.post("/orders/never")
    # Leaving test_app shuts down: "blocks" and "never" are cancelled.

    records = [r for r in caplog.records if r.name == "quart_deferred"]
    formatter = logging.Formatter("%(deferred_callback)s|%(deferred_method)s|%(deferred_path)s")
    lines = {formatter.format(r).split("|", 1)[1]: r for r in records}
    assert set(lines) >= {"POST|/orders/fails", "POST|/orders/hangs", "POST|/orders/blocks"}
    messages = [r.getMessage() for r in records]
    for expected in ("fails for POST /orders/fails failed", "timed out", "Skipped", "80%"):
        assert any(expected in m for m in messages), expected
    assert sum("Cancelled" in m for m in messages) == 3
    for record in records:
        fields = [record.__dict__[field] for field in FIELDS]  # Present on every line.
        if "drained" in record.getMessage():  # About the runner, not one callback.
            assert fields == [None] * 4
            continue
        assert all(fields), record.getMessage()
        assert record.__dict__["deferred_callback"] in record.getMessage()
    others = [r for r in caplog.records if r.name != "quart_deferred" and r.levelno >= logging.INFO]
    assert others == []
