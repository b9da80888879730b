"""The runner: failures, timeouts, the concurrency limit, join, stats and the drain at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
import logging
import threading
from typing import Any

import httpx
import pytest
from quart import Quart, request
from quart.signals import got_background_exception

from quart_deferred import after_this_response, QuartDeferred, Stats

from .conftest import add_up, Client, counts, until, wait
from .servers import running


@pytest.fixture(name="thread_gate")
def _thread_gate() -> Iterator[threading.Event]:
    """An event that blocks sync jobs; always opened at the end, so threads can finish."""
    gate = threading.Event()
    yield gate
    gate.set()


async def test_a_failure_is_reported_and_does_not_stop_the_next_job(
    app: Quart, deferred: QuartDeferred, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing job is reported through got_background_exception, and the request's next job still
    runs."""
    reported: list[BaseException] = []
    ran: list[str] = []

    async def receiver(sender: Quart, exception: BaseException) -> None:
        reported.append(exception)

    async def fails() -> None:
        raise ValueError("mail server down")

    @app.get("/")
    async def index() -> str:
        after_this_response(fails)
        after_this_response(ran.append, "next")
        return "created"

    with got_background_exception.connected_to(receiver, app):
        reply = await client.get("/")
        await deferred.join(timeout=5)
    assert (reply.status_code, reply.text) == (200, "created")
    assert ran == ["next"]
    assert [str(error) for error in reported] == ["mail server down"]
    records = [r for r in caplog.records if r.exc_info and r.exc_info[1] is reported[0]]
    [record] = records
    assert record.name == "quart_deferred"
    assert record.getMessage() == f"{fails.__module__}.{fails.__qualname__} for GET / failed."
    assert counts(deferred.stats()) == Stats(scheduled=2, succeeded=1, failed=1)


async def test_an_apps_own_handle_background_exception_gets_the_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An app that overrides handle_background_exception handles job failures itself."""
    handled: list[BaseException] = []

    class MyQuart(Quart):
        async def handle_background_exception(self, *args: Any) -> None:
            handled.append(args[-1])  # Quart 0.23 passes the context first.

    app = MyQuart(__name__)
    deferred = QuartDeferred(app)

    async def fails() -> None:
        raise ValueError("mail server down")

    @app.get("/")
    async def index() -> str:
        after_this_response(fails)
        return "ok"

    await app.test_client().get("/")
    await deferred.join(timeout=5)
    assert [str(error) for error in handled] == ["mail server down"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_timed_out_job_is_cancelled_and_logged_by_name_and_request(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """A job past QUART_DEFERRED_TASK_TIMEOUT is cancelled, logged with its name and request, and
    the next job runs."""
    app.config["QUART_DEFERRED_TASK_TIMEOUT"] = 0.05
    cancelled = asyncio.Event()
    ran: list[str] = []

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @app.get("/hang")
    async def hang() -> str:
        after_this_response(hangs)
        after_this_response(ran.append, "next")
        return "ok"

    await app.test_client().get("/hang")
    await deferred.join(timeout=5)
    assert cancelled.is_set()
    assert ran == ["next"]
    assert counts(deferred.stats()) == Stats(scheduled=2, succeeded=1, timed_out=1)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "test_runner.test_a_timed_out_job_is_cancelled_and_logged_by_name_and_request" in (
        record.getMessage()
    )
    assert "hangs for GET /hang timed out after 0.05s" in record.getMessage()
    assert record.__dict__["deferred_request"] == "GET /hang"


async def test_a_sync_job_past_its_timeout_is_never_reported_cancelled(
    app: Quart,
    deferred: QuartDeferred,
    thread_gate: threading.Event,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A thread cannot be cancelled: say it is still running, count it as timed out."""
    app.config["QUART_DEFERRED_TASK_TIMEOUT"] = 0.05
    finished = threading.Event()
    caplog.set_level(logging.INFO, logger="quart_deferred")

    def blocks() -> None:
        thread_gate.wait(5)
        finished.set()

    @app.get("/")
    async def index() -> str:
        after_this_response(blocks)
        return "ok"

    await app.test_client().get("/")
    await deferred.join(timeout=5)
    assert counts(deferred.stats()) == Stats(scheduled=1, timed_out=1)
    messages = [r.getMessage() for r in caplog.records]
    assert any("still running on its thread, which cannot be cancelled" in m for m in messages)
    assert not any("Cancelled" in m for m in messages)
    thread_gate.set()
    await wait(asyncio.to_thread(finished.wait, 5))
    await wait(
        until(lambda: any("finished on its thread" in r.getMessage() for r in caplog.records))
    )


async def test_concurrency_limit_with_fifo_waiting(app: Quart, deferred: QuartDeferred) -> None:
    """At most MAX_CONCURRENCY jobs run; the rest start in the order they were scheduled."""
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 2
    gates = [asyncio.Event() for _ in range(6)]
    started: list[int] = []

    async def job(index: int) -> None:
        started.append(index)
        await gates[index].wait()

    @app.get("/<int:index>")
    async def index_view(index: int) -> str:
        after_this_response(job, index)
        return "ok"

    client = app.test_client()
    for index in range(6):
        await client.get(f"/{index}")
    await wait(until(lambda: len(started) == 2))
    assert deferred.stats().running == 2
    assert deferred.stats().waiting == 4
    for finished, index in enumerate((1, 0, 3, 2, 5, 4)):  # Out of order on purpose.
        gates[index].set()
        expected = min(6, finished + 3)
        await wait(until(lambda: len(started) == expected))  # noqa: B023
        assert deferred.stats().running <= 2
    await deferred.join(timeout=5)
    assert started == [0, 1, 2, 3, 4, 5]


async def test_a_waiting_batch_does_not_hold_back_the_ones_queued_behind_it(
    app: Quart, deferred: QuartDeferred
) -> None:
    """Batches queued together share one wake-up, but one that waits hands the rest on.

    The first request's job can only finish once the second one's has run, and
    both are queued before any worker has started: run in turn, they would
    never finish.
    """
    second_ran = asyncio.Event()
    order: list[str] = []

    async def first() -> None:
        order.append("first started")
        await second_ran.wait()
        order.append("first finished")

    async def second() -> None:
        order.append("second")
        second_ran.set()

    @app.get("/")
    async def index() -> str:
        deferred.start_soon(first)
        deferred.start_soon(second)
        return "ok"

    await app.test_client().get("/")
    await wait(deferred.join())
    assert order == ["first started", "second", "first finished"]
    assert counts(deferred.stats()) == Stats(scheduled=2, succeeded=2)


async def test_join_waits_for_work_added_while_it_waits(
    app: Quart, deferred: QuartDeferred
) -> None:
    """join() also waits for work that running jobs start meanwhile."""
    done: list[str] = []

    async def second() -> None:
        done.append("second")

    @app.get("/")
    async def index() -> str:
        @after_this_response
        async def first() -> None:
            await asyncio.sleep(0)
            deferred.start_soon(second)
            done.append("first")

        return "ok"

    await app.test_client().get("/")
    await deferred.join(timeout=5)
    assert done == ["first", "second"]


async def test_join_timeout_raises_the_builtin_timeout_error(
    app: Quart, deferred: QuartDeferred
) -> None:
    """join(timeout=...) raises TimeoutError saying how many jobs wait and run."""
    release = asyncio.Event()

    @app.get("/")
    async def index() -> str:
        after_this_response(release.wait)
        return "ok"

    await app.test_client().get("/")
    with pytest.raises(TimeoutError, match="gave up after 0.01s with 0 jobs waiting and 1 running"):
        await deferred.join(timeout=0.01)
    release.set()
    await deferred.join(timeout=5)


async def test_stats_add_up_at_every_step(app: Quart, deferred: QuartDeferred) -> None:
    """scheduled equals the sum of the other counters in every snapshot, taken while jobs run."""
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 1
    snapshots: list[Stats] = []
    gate = asyncio.Event()

    async def job(fail: bool) -> None:
        snapshots.append(deferred.stats())
        await gate.wait()
        if fail:
            raise RuntimeError("planned")

    @app.get("/")
    async def index() -> str:
        after_this_response(job, request.args.get("fail") == "1")
        after_this_response(job, False, when="failure")
        return "ok"

    client = app.test_client()
    for fail in ("0", "1", "0"):
        await client.get(f"/?fail={fail}")
        snapshots.append(deferred.stats())
    gate.set()
    await deferred.join(timeout=5)
    snapshots.append(deferred.stats())
    assert all(add_up(stats) for stats in snapshots)
    assert counts(snapshots[-1]) == Stats(scheduled=3, succeeded=2, failed=1, skipped=3)


async def test_drain_at_shutdown_finishes_what_it_can_and_logs_what_it_cancels(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """At shutdown, quick work finishes within the drain; what is left is cancelled and named."""
    app.config["QUART_DEFERRED_SHUTDOWN_TIMEOUT"] = 0.2
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 1
    finished: list[str] = []
    started = asyncio.Event()

    async def quick() -> None:
        finished.append("quick")

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    async def never_started() -> None:
        finished.append("never_started")

    @app.get("/quick")
    async def quick_view() -> str:
        after_this_response(quick)
        return "ok"

    @app.get("/hang")
    async def hang_view() -> str:
        after_this_response(hangs)
        after_this_response(never_started)
        return "ok"

    @app.get("/queued")
    async def queued_view() -> str:
        after_this_response(never_started)
        return "ok"

    async with app.test_app() as test_app:
        client = test_app.test_client()
        await client.get("/quick")
        await deferred.join(timeout=5)
        await client.get("/hang")
        await wait(started.wait())
        await client.get("/queued")
    assert finished == ["quick"]
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert len(warnings) == 3
    assert "hangs for GET /hang at shutdown: it was still running" in warnings[0]
    assert "never_started for GET /hang at shutdown: it had not started" in warnings[1]
    assert "never_started for GET /queued at shutdown: it had not started" in warnings[2]
    assert counts(deferred.stats()) == Stats(scheduled=4, succeeded=1, cancelled=3)


async def test_a_sync_job_running_at_shutdown_is_not_called_cancelled(
    app: Quart,
    deferred: QuartDeferred,
    thread_gate: threading.Event,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain job still on its thread at shutdown is logged as still running, never as
    cancelled."""
    app.config["QUART_DEFERRED_SHUTDOWN_TIMEOUT"] = 0.1
    on_thread = threading.Event()
    finished = threading.Event()

    def blocks() -> None:
        on_thread.set()
        thread_gate.wait(5)
        finished.set()

    @app.get("/")
    async def index() -> str:
        after_this_response(blocks)
        return "ok"

    async with app.test_app() as test_app:
        await test_app.test_client().get("/")
        await wait(asyncio.to_thread(on_thread.wait, 5))
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "still running on its thread, which cannot be cancelled" in record.getMessage()
    assert counts(deferred.stats()) == Stats(scheduled=1, timed_out=1)
    thread_gate.set()
    await wait(asyncio.to_thread(finished.wait, 5))


async def test_work_arriving_after_shutdown_is_logged_not_lost(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """Work started after the runner shut down is logged as cancelled, not dropped silently."""

    async def job() -> None:
        pass

    async with app.test_app():
        pass
    async with app.app_context():
        deferred.start_soon(job)
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "job for no request at shutdown: it had not started" in record.getMessage()
    assert "arrived after the runner had shut down" in record.getMessage()


async def test_start_soon_runs_now_in_the_request_context(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """start_soon work starts at once, in the request's context, before the view returns."""
    order: list[str] = []
    release = asyncio.Event()

    @app.get("/")
    async def index() -> str:
        async def now() -> None:
            order.append(f"start_soon {request.path}")
            release.set()

        deferred.start_soon(now)
        await wait(release.wait())  # It runs before the view returns.
        order.append("view returns")
        return "ok"

    await client.get("/")
    await deferred.join(timeout=5)
    assert order == ["start_soon /", "view returns"]


async def test_start_soon_outside_a_request_gets_an_app_context(
    app: Quart, deferred: QuartDeferred
) -> None:
    """start_soon outside any context runs the job in a fresh app context of the app."""
    from quart import current_app, has_request_context

    seen: list[Any] = []

    async def job() -> None:
        seen.append((current_app.name, has_request_context()))

    deferred.start_soon(job)  # No app context at all: one is pushed for the job.
    await deferred.join(timeout=5)
    assert seen == [(app.name, False)]


async def test_hypercorn_stopping_drains_and_logs_what_it_cancels(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping a served hypercorn drains quick work and names the job it cancels."""
    app.config["QUART_DEFERRED_SHUTDOWN_TIMEOUT"] = 0.2
    started = asyncio.Event()
    finished: list[str] = []

    async def quick() -> None:
        await started.wait()
        finished.append("quick")

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    @app.get("/")
    async def index() -> str:
        after_this_response(hangs)
        deferred.start_soon(quick)
        return "ok"

    async with running(app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/")).text == "ok"
        await wait(started.wait())
    # Leaving `running` stopped hypercorn, whose lifespan shutdown drained the runner.
    assert finished == ["quick"]
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "hangs for GET / at shutdown: it was still running" in record.getMessage()
    assert counts(deferred.stats()) == Stats(scheduled=2, succeeded=1, cancelled=1)


async def test_work_started_before_serving_is_kept_and_drained(
    app: Quart, deferred: QuartDeferred
) -> None:
    """Work started in a before_serving function is kept by the serving runner and drained."""
    ran: list[str] = []
    release = asyncio.Event()

    async def warm_cache() -> None:
        await release.wait()
        ran.append("warm_cache")

    @app.before_serving
    async def start_warming() -> None:
        deferred.start_soon(warm_cache)

    async with app.test_app():
        assert deferred.stats().running == 1
        release.set()
    assert ran == ["warm_cache"]
    assert counts(deferred.stats()) == Stats(scheduled=1, succeeded=1)
