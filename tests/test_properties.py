"""Property: however the exchange ends, every registered callback is accounted for."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from hypothesis import given, HealthCheck, settings, strategies as st
from quart import abort, Quart, Response

from quart_deferred import after_this_response, QuartDeferred, Stats

from .conftest import counts, wait

OUTCOMES = ("200", "404", "500", "stream", "disconnect")
SUCCESSFUL = {"200", "stream"}


@dataclass(frozen=True)
class Registration:
    kind: str  # "async" or "sync"
    behaviour: str  # "return", "raise" or "hang"
    when: str
    error: type[BaseException] = RuntimeError  # What "raise" raises.


WHEN = st.sampled_from(["always", "success", "failure"])
# A job may raise anything, the BaseExceptions that end tasks and servers included: each
# must end that job alone, as failed.
ERRORS = st.sampled_from(
    [RuntimeError, SystemExit, KeyboardInterrupt, GeneratorExit, asyncio.CancelledError]
)
# Hangs are async only: a plain function that blocks keeps its pool thread past its
# timeout (reported, never called cancelled: see test_runner.py), which would make
# the later jobs of an example depend on thread timing rather than on the runner.
registrations = st.lists(
    st.one_of(
        st.builds(
            Registration,
            st.just("async"),
            st.sampled_from(["return", "raise", "hang"]),
            WHEN,
            ERRORS,
        ),
        st.builds(
            Registration, st.just("sync"), st.sampled_from(["return", "raise"]), WHEN, ERRORS
        ),
    ),
    max_size=5,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exchanges=st.lists(st.tuples(registrations, st.sampled_from(OUTCOMES)), max_size=4))
def test_every_callback_is_accounted_for(exchanges: list[tuple[list[Registration], str]]) -> None:
    """For generated mixes of jobs and outcomes, every callback ends one of the four ways and the
    counters add up."""
    asyncio.run(_scenario(exchanges))


async def _scenario(exchanges: list[tuple[list[Registration], str]]) -> None:
    app = Quart(__name__)
    app.config["QUART_DEFERRED_TASK_TIMEOUT"] = 0.05
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 2
    deferred = QuartDeferred(app)
    started: Counter[str] = Counter()
    never = asyncio.Event()
    plans = {str(index): plan for index, plan in enumerate(exchanges)}

    def make(key: str, registration: Registration) -> Any:
        if registration.kind == "async":

            async def job() -> None:
                started[key] += 1
                if registration.behaviour == "raise":
                    raise registration.error(key)
                if registration.behaviour == "hang":
                    await never.wait()

            return job

        def sync_job() -> None:
            started[key] += 1
            if registration.behaviour == "raise":
                raise registration.error(key)

        return sync_job

    @app.get("/<exchange_id>")
    async def view(exchange_id: str) -> Any:
        registered, outcome = plans[exchange_id]
        for index, registration in enumerate(registered):
            job = make(f"{exchange_id}.{index}", registration)
            after_this_response(job, when=registration.when)
        if outcome == "404":
            abort(404)
        if outcome == "500":
            raise RuntimeError("planned failure")
        if outcome in ("stream", "disconnect"):

            async def body() -> AsyncGenerator[bytes, None]:
                yield b"first"
                if outcome == "disconnect":
                    await never.wait()
                yield b"last"

            return Response(body())
        return "ok"

    client = app.test_client()
    for exchange_id, (_, outcome) in plans.items():
        if outcome == "disconnect":
            async with client.request(f"/{exchange_id}") as connection:
                await wait(connection.receive())
                await connection.disconnect()
        else:
            await client.get(f"/{exchange_id}")
    await deferred.join(timeout=10)

    expected: Counter[str] = Counter()
    skipped = 0
    for exchange_id, (registered, outcome) in plans.items():
        for index, registration in enumerate(registered):
            successful = outcome in SUCCESSFUL
            runs = registration.when == "always" or (registration.when == "success") == successful
            if runs:
                expected[f"{exchange_id}.{index}"] = 1
            else:
                skipped += 1
    assert started == expected  # At most once, and exactly once where `when` matched.

    stats = deferred.stats()
    assert stats.scheduled == sum(expected.values())
    assert stats.skipped == skipped
    assert stats.waiting == stats.running == 0
    assert counts(stats) == Stats(
        scheduled=stats.scheduled,
        succeeded=stats.succeeded,
        failed=stats.failed,
        timed_out=stats.timed_out,
        skipped=skipped,
    )
    planned = [
        registration
        for exchange_id, (registered, _) in plans.items()
        for index, registration in enumerate(registered)
        if f"{exchange_id}.{index}" in expected
    ]
    assert stats.failed == sum(1 for r in planned if r.behaviour == "raise")
    assert stats.timed_out == sum(1 for r in planned if r.behaviour == "hang")
