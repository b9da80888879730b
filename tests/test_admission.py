"""Admission: QUART_DEFERRED_MAX_PENDING refuses new work, and drops nothing it accepted."""

from __future__ import annotations

import asyncio
import logging

import pytest
from quart import Quart

from quart_deferred import after_this_response, OverloadedError, QuartDeferred, Stats

from .conftest import counts, until, wait


async def test_max_pending_refuses_new_work_and_drops_nothing_accepted(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """Past QUART_DEFERRED_MAX_PENDING the view gets OverloadedError and can answer 503."""
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 1
    app.config["QUART_DEFERRED_MAX_PENDING"] = 5
    release = asyncio.Event()
    ran: list[str] = []

    async def job(request_id: str) -> None:
        await release.wait()
        ran.append(request_id)

    @app.get("/<request_id>")
    async def accept(request_id: str) -> tuple[str, int]:
        try:
            after_this_response(job, request_id)
        except OverloadedError as error:
            return str(error), 503
        return "accepted", 202

    client = app.test_client()
    replies = []
    for index in range(8):
        response = await client.get(f"/{index}")
        replies.append((response.status_code, await response.get_data(as_text=True)))
    # One running and five waiting: the seventh and eighth are refused.
    assert [status for status, _ in replies] == [202] * 6 + [503] * 2
    assert "refused tests.test_admission" in replies[6][1]
    assert "5 jobs are already waiting to run (QUART_DEFERRED_MAX_PENDING=5)" in replies[6][1]
    assert "Answer 503" in replies[6][1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # Once per crossing, not once per request.
    assert "80% of QUART_DEFERRED_MAX_PENDING=5" in warnings[0]
    release.set()
    await deferred.join(timeout=5)
    assert ran == [str(index) for index in range(6)]


async def test_start_soon_is_refused_too(app: Quart, deferred: QuartDeferred) -> None:
    """QUART_DEFERRED_MAX_PENDING refuses start_soon work with OverloadedError as well."""
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 1
    app.config["QUART_DEFERRED_MAX_PENDING"] = 1
    release = asyncio.Event()
    async with app.app_context():
        deferred.start_soon(release.wait)
        await wait(until(lambda: deferred.stats().running == 1))
        deferred.start_soon(release.wait)  # Waiting: the limit is reached.
        with pytest.raises(OverloadedError, match="start_soon"):
            deferred.start_soon(release.wait)
    release.set()
    await deferred.join(timeout=5)
    assert counts(deferred.stats()) == Stats(scheduled=2, succeeded=2)
