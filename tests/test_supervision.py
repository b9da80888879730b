"""Supervision against hostile jobs and bad input: every job accounted for, nothing shared."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import threading
import tracemalloc
from typing import Any

import pytest
from quart import Quart, request
from quart.signals import got_background_exception
from quart.testing.app import LifespanError

from benchmarks.asgi import scope as http_scope
from quart_deferred import (
    after_this_response,
    ContextError,
    InvalidCallbackError,
    InvalidOptionError,
    OverloadedError,
    QuartDeferred,
    render_prometheus,
    Stats,
)

from .conftest import add_up, counts, QUART_VERSION, until, wait

BASE_EXCEPTIONS = [SystemExit(2), KeyboardInterrupt(), GeneratorExit(), asyncio.CancelledError()]


@pytest.mark.parametrize("error", BASE_EXCEPTIONS, ids=lambda error: type(error).__name__)
@pytest.mark.parametrize("plain", [False, True], ids=["async", "plain"])
async def test_any_base_exception_fails_its_job_alone(
    app: Quart, deferred: QuartDeferred, error: BaseException, plain: bool
) -> None:
    """SystemExit, KeyboardInterrupt, GeneratorExit and a job's own CancelledError end that
    job as failed, reported by name; the rest of the batch and the app-wide hook still run."""
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 1
    ran: list[str] = []
    reported: list[BaseException] = []

    async def receiver(sender: Quart, exception: BaseException) -> None:
        reported.append(exception)

    def raise_plain() -> None:
        raise error

    async def raise_async() -> None:
        await asyncio.sleep(0)
        raise error

    @deferred.after_response
    async def hook() -> None:
        ran.append("hook")

    @app.get("/")
    async def index() -> str:
        after_this_response(raise_plain if plain else raise_async)
        after_this_response(ran.append, "next")
        return "ok"

    with got_background_exception.connected_to(receiver, app):
        client = app.test_client()
        await client.get("/")
        await wait(deferred.join())
        await client.get("/")  # The runner is still whole: a second request runs too.
        await wait(deferred.join())
    assert ran == ["next", "hook"] * 2
    assert [type(e) for e in reported] == [type(error)] * 2
    assert counts(deferred.stats()) == Stats(scheduled=6, succeeded=4, failed=2)


async def test_awaiting_a_cancelled_future_is_a_failure_not_a_shutdown(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is shutting down, so nothing is logged as cancelled at shutdown."""
    ran: list[str] = []

    async def awaits_cancelled() -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    @app.get("/")
    async def index() -> str:
        after_this_response(awaits_cancelled)
        after_this_response(ran.append, "next")
        return "ok"

    await app.test_client().get("/")
    await wait(deferred.join())
    assert ran == ["next"]
    assert not any("Cancelled" in r.getMessage() for r in caplog.records)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "awaits_cancelled for GET / failed" in record.getMessage()
    assert counts(deferred.stats()) == Stats(scheduled=2, succeeded=1, failed=1)


async def test_a_callable_whose_name_raises_is_still_run_and_reported(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """A callable whose __qualname__ raises still runs, and its failure is reported."""

    class Nameless:
        def __getattribute__(self, name: str) -> Any:
            if name == "__qualname__":
                raise RuntimeError("no name")
            return object.__getattribute__(self, name)

        async def __call__(self) -> None:
            raise ValueError("planned")

    @app.get("/")
    async def index() -> str:
        after_this_response(Nameless())
        return "ok"

    await app.test_client().get("/")
    await wait(deferred.join())
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "<a Nameless object> for GET / failed" in record.getMessage()
    assert counts(deferred.stats()) == Stats(scheduled=1, failed=1)


async def test_each_requests_jobs_have_a_task_of_their_own(
    app: Quart, deferred: QuartDeferred
) -> None:
    """asyncio.current_task() in a job is never another request's, even one after another."""
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 1
    tasks: dict[str, set[asyncio.Task[Any] | None]] = {}

    async def note(name: str) -> None:
        tasks.setdefault(name, set()).add(asyncio.current_task())

    @app.get("/<name>")
    async def index(name: str) -> str:
        after_this_response(note, name)
        after_this_response(note, name)
        return "ok"

    client = app.test_client()
    for name in ("alice", "bob", "carol"):
        await client.get(f"/{name}")
    await wait(deferred.join())
    assert all(len(seen) == 1 for seen in tasks.values())  # One task per request's batch...
    assert len(set.union(*tasks.values())) == 3  # ...and none shared.


async def test_an_async_scoped_session_is_the_requests_own(
    app: Quart, deferred: QuartDeferred, tmp_path: Any
) -> None:
    """SQLAlchemy's documented async_scoped_session(scopefunc=current_task) against SQLite:
    bob's job must not commit alice's failed, uncommitted row."""
    from sqlalchemy import Column, Integer, select, String
    from sqlalchemy.ext.asyncio import (
        async_scoped_session,
        async_sessionmaker,
        create_async_engine,
    )
    from sqlalchemy.orm import declarative_base

    base: Any = declarative_base()

    class Row(base):  # type: ignore[misc]
        __tablename__ = "rows"
        id = Column(Integer, primary_key=True)
        owner = Column(String, nullable=False)

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'rows.sqlite3'}")
    async with engine.begin() as connection:
        await connection.run_sync(base.metadata.create_all)
    session = async_scoped_session(
        async_sessionmaker(engine, expire_on_commit=False), scopefunc=asyncio.current_task
    )

    async def alice() -> None:
        session.add(Row(owner="alice"))
        raise RuntimeError("alice's job fails before it commits")

    async def bob() -> None:
        session.add(Row(owner="bob"))
        await session.commit()

    @app.get("/<name>")
    async def index(name: str) -> str:
        after_this_response(alice if name == "alice" else bob)
        return "ok"

    client = app.test_client()
    await client.get("/alice")
    await wait(deferred.join())
    await client.get("/bob")
    await wait(deferred.join())
    async with async_sessionmaker(engine)() as check:
        owners: list[str] = list((await check.execute(select(Row.owner))).scalars().all())
    await engine.dispose()
    assert owners == ["bob"]


async def test_runner_tasks_keep_nothing_of_the_request_that_started_them(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """A big value in the first request's context is freed after join(), and the runner's
    lines about the second request's work carry the second request's own fields."""
    import contextvars
    import weakref

    payload: contextvars.ContextVar[Any] = contextvars.ContextVar("payload")

    class Big:
        pass

    refs: list[weakref.ref[Big]] = []

    async def fails() -> None:
        raise ValueError("planned")

    @app.get("/first")
    async def first() -> str:
        big = Big()
        refs.append(weakref.ref(big))
        payload.set(big)
        after_this_response(asyncio.sleep, 0)
        return "ok"

    @app.get("/second")
    async def second() -> str:
        after_this_response(fails)
        return "ok"

    client = app.test_client()
    await client.get("/first")
    await client.get("/second")
    await wait(deferred.join())
    gc.collect()
    assert refs[0]() is None
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.__dict__["deferred_path"] == "/second"


async def test_a_non_awaiting_chain_does_not_freeze_the_loop(
    app: Quart, deferred: QuartDeferred
) -> None:
    """A start_soon job that reschedules itself without awaiting: the loop still turns."""
    rounds = 0
    stop = False

    async def chain() -> None:
        nonlocal rounds
        rounds += 1
        if not stop:
            deferred.start_soon(chain)

    async with app.app_context():
        deferred.start_soon(chain)
    lags = []
    loop = asyncio.get_running_loop()
    for _ in range(20):
        before = loop.time()
        await asyncio.sleep(0.005)
        lags.append(loop.time() - before - 0.005)
    stop = True
    await wait(deferred.join())
    print(f"\nchain of {rounds} jobs: the loop lagged at most {max(lags) * 1000:.1f} ms")
    assert rounds > 20
    assert max(lags) < 0.1, f"the loop lagged {max(lags):.3f}s"


async def test_one_request_with_100000_jobs_does_not_freeze_the_loop(
    app: Quart, deferred: QuartDeferred
) -> None:
    """100,000 tiny jobs of one request leave the event loop responsive."""
    done = 0

    async def tiny() -> None:
        nonlocal done
        done += 1

    @app.get("/")
    async def index() -> str:
        for _ in range(100_000):
            after_this_response(tiny)
        return "ok"

    await app.test_client().get("/")
    loop = asyncio.get_running_loop()
    lags = []
    while done < 100_000:
        before = loop.time()
        await asyncio.sleep(0)
        lags.append(loop.time() - before)
    await wait(deferred.join())
    print(f"\n100,000 jobs of one request: the loop lagged at most {max(lags) * 1000:.1f} ms")
    assert max(lags) < 0.1, f"the loop lagged {max(lags):.3f}s"


async def test_a_job_that_blocks_the_loop_is_reported_once_and_counts_past_its_timeout(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """time.sleep() in an async job past its timeout cannot be cancelled: it counts as timed
    out, and that it blocked the loop is logged once by name."""
    import time

    app.config["QUART_DEFERRED_TASK_TIMEOUT"] = 0.05

    async def blocks() -> None:
        time.sleep(0.3)  # noqa: ASYNC251  # The mistake under test.

    @app.get("/")
    async def index() -> str:
        after_this_response(blocks)
        return "ok"

    client = app.test_client()
    await client.get("/")
    await client.get("/")
    await wait(deferred.join())
    assert counts(deferred.stats()) == Stats(scheduled=2, timed_out=2)
    blocked = [r.getMessage() for r in caplog.records if "blocked the event loop" in r.getMessage()]
    assert len(blocked) == 1
    assert "blocks for GET / blocked the event loop for 0.3" in blocked[0]
    assert any("without awaiting, past its 0.05s timeout" in r.getMessage() for r in caplog.records)


async def test_a_garbage_collection_during_a_job_does_not_count_against_its_timeout(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """A collection that lands in a job's step is not the job's doing: a job that ends at once
    succeeds, however long the collection took (a large heap in a loaded process)."""
    import time

    app.config["QUART_DEFERRED_TASK_TIMEOUT"] = 0.05

    def slow_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            time.sleep(0.2)  # A collection of a large heap, made slow on purpose.

    async def collects() -> None:
        gc.collect()  # Stands for a collection the interpreter starts in the job's step.

    @app.get("/")
    async def index() -> str:
        after_this_response(collects)
        return "ok"

    client = app.test_client()
    await client.get("/")  # The runner now exists, and times collections.
    await wait(deferred.join())
    gc.callbacks.append(slow_collection)
    try:
        await client.get("/")
        await wait(deferred.join())
    finally:
        gc.callbacks.remove(slow_collection)
    assert counts(deferred.stats()) == Stats(scheduled=2, succeeded=2)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_job_that_ignores_its_timeout_is_let_go_of_and_the_batch_goes_on(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """A job that swallows its timeout's cancellation is let go of, and the next job runs."""
    app.config["QUART_DEFERRED_TASK_TIMEOUT"] = 0.05
    ran: list[str] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass

    @app.get("/")
    async def index() -> str:
        after_this_response(stubborn)
        after_this_response(ran.append, "next")
        return "ok"

    await app.test_client().get("/")
    await wait(deferred.join(), timeout=5)
    assert ran == ["next"]
    assert counts(deferred.stats()) == Stats(scheduled=2, succeeded=1, timed_out=1)
    assert any(
        "stubborn for GET / ignored its cancellation after its 0.05s timeout" in r.getMessage()
        for r in caplog.records
    )


async def test_a_keyed_plain_job_keeps_its_key_while_it_still_runs_on_its_thread(
    app: Quart, deferred: QuartDeferred
) -> None:
    """Its timeout does not free the key: no second copy runs beside the first."""
    app.config["QUART_DEFERRED_TASK_TIMEOUT"] = 0.05
    gate = threading.Event()
    running = 0
    peak = 0
    lock = threading.Lock()

    def keyed() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        gate.wait(5)
        with lock:
            running -= 1

    @app.get("/")
    async def index() -> str:
        return str(after_this_response(keyed, key="only-one"))

    client = app.test_client()
    assert await (await client.get("/")).get_data(as_text=True) == "True"
    await wait(deferred.join())  # Timed out; still on its thread.
    assert await (await client.get("/")).get_data(as_text=True) == "False"
    gate.set()
    await wait(until(lambda: running == 0))
    await wait(until(lambda: "only-one" not in app.extensions["quart_deferred"].keys))
    assert await (await client.get("/")).get_data(as_text=True) == "True"
    await wait(deferred.join())
    assert peak == 1


async def test_max_pending_counts_the_jobs_of_requests_still_in_flight(
    app: Quart, deferred: QuartDeferred
) -> None:
    """One request cannot register more than the limit, nor many requests together."""
    app.config["QUART_DEFERRED_MAX_PENDING"] = 100
    refused: list[int] = []
    release = asyncio.Event()

    @app.get("/<int:count>")
    async def index(count: int) -> str:
        for number in range(count):
            try:
                after_this_response(release.wait)
            except OverloadedError:
                refused.append(number)
                break
        await release.wait()  # Keep every request in flight together.
        return "ok"

    client = app.test_client()
    one = asyncio.ensure_future(client.get("/10000"))
    await wait(until(lambda: len(refused) == 1))
    assert refused == [100]
    release.set()
    await wait(one)
    await wait(deferred.join())
    release.clear()
    refused.clear()
    many = [asyncio.ensure_future(client.get("/10")) for _ in range(30)]
    await wait(until(lambda: len(refused) == 20))
    release.set()
    await wait(asyncio.gather(*many))
    await wait(deferred.join())
    assert deferred.stats().scheduled == 100 + 100


async def test_max_pending_holds_without_a_lifespan_or_runner(app: Quart) -> None:
    """QUART_DEFERRED_MAX_PENDING is enforced before any runner exists."""
    app.config["QUART_DEFERRED_MAX_PENDING"] = 5
    accepted = 0

    @app.get("/")
    async def index() -> str:
        nonlocal accepted
        for _ in range(200):
            try:
                after_this_response(asyncio.sleep, 0)
            except OverloadedError:
                break
            accepted += 1
        return "ok"

    await app.test_client().get("/")
    assert accepted == 5


def test_a_loop_that_ended_with_work_queued_is_accounted_for_and_the_next_starts_clean(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without a lifespan, each asyncio.run() is a new loop: work the first left behind is
    logged by name as lost, its counts and keys are released, and MAX_PENDING starts clean."""
    app = Quart(__name__)
    deferred = QuartDeferred(app, max_pending=3, max_concurrency=1)

    async def forever() -> None:
        await asyncio.Event().wait()

    @app.get("/")
    async def index() -> tuple[str, int]:
        try:
            scheduled = after_this_response(forever, key=request.args.get("key", "k"))
        except OverloadedError:
            return "refused", 503
        return str(scheduled), 200

    async def first_loop() -> None:
        client = app.test_client()
        for key in ("a", "b", "c"):
            await client.get(f"/?key={key}")
        await until(lambda: deferred.stats().running == 1)

    async def second_loop() -> list[str]:
        client = app.test_client()
        replies = []
        for key in ("a", "b", "c"):
            replies.append(await (await client.get(f"/?key={key}")).get_data(as_text=True))
        return replies

    loop = asyncio.new_event_loop()
    loop.run_until_complete(first_loop())
    loop.close()  # Closed without cancelling anything: the work is simply gone.
    assert asyncio.run(second_loop()) == ["True", "True", "True"]
    lost = [r.getMessage() for r in caplog.records if "event loop ended" in r.getMessage()]
    assert len(lost) == 3
    assert all("forever for GET /" in message for message in lost)
    assert add_up(deferred.stats())


async def test_polling_join_keeps_nothing(app: Quart, deferred: QuartDeferred) -> None:
    """join(timeout=0) polling leaves no waiter behind."""
    release = asyncio.Event()

    @app.get("/")
    async def index() -> str:
        after_this_response(release.wait)
        return "ok"

    await app.test_client().get("/")
    for _ in range(100):  # Warm up.
        with pytest.raises(TimeoutError):
            await deferred.join(timeout=0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            with pytest.raises(TimeoutError):
                await deferred.join(timeout=0)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    release.set()
    await wait(deferred.join())
    assert grown < 100_000, f"5,000 polls kept {grown} bytes"


async def test_join_from_inside_a_job_is_a_clear_error(app: Quart, deferred: QuartDeferred) -> None:
    """join() from inside a job is refused: it would wait for itself."""
    errors: list[BaseException] = []

    async def joins() -> None:
        try:
            await deferred.join(timeout=1)
        except ContextError as error:
            errors.append(error)

    @app.get("/")
    async def index() -> str:
        after_this_response(joins)
        return "ok"

    await app.test_client().get("/")
    await wait(deferred.join())
    [error] = errors
    assert "from inside deferred work, which would wait for itself forever" in str(error)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("QUART_DEFERRED_TASK_TIMEOUT", math.nan),
        ("QUART_DEFERRED_TASK_TIMEOUT", math.inf),
        ("QUART_DEFERRED_SHUTDOWN_TIMEOUT", math.nan),
        ("QUART_DEFERRED_SHUTDOWN_TIMEOUT", math.inf),
        ("QUART_DEFERRED_ENQUEUE_TIMEOUT", math.nan),
        ("QUART_DEFERRED_LOG_ARGUMENTS", "yes"),
    ],
)
def test_nan_inf_and_wrong_types_are_refused_at_init(key: str, value: object) -> None:
    """NaN, infinite and wrongly typed config values are refused at init, naming the key."""
    app = Quart(__name__)
    app.config[key] = value
    with pytest.raises(InvalidOptionError, match=key):
        QuartDeferred(app)


async def test_config_set_after_init_app_is_checked_when_it_is_read(
    app: Quart, deferred: QuartDeferred
) -> None:
    """A bad config value set after init_app is refused when the runner reads it."""
    app.config["QUART_DEFERRED_TASK_TIMEOUT"] = math.nan
    with pytest.raises(LifespanError, match="QUART_DEFERRED_TASK_TIMEOUT must be a finite"):
        async with app.test_app():
            pass


def test_wrong_types_get_clear_errors(app: Quart, deferred: QuartDeferred) -> None:
    """Wrong argument types to stats, after_response and render_prometheus get clear errors."""
    with pytest.raises(InvalidOptionError, match="not a Quart app"):
        deferred.stats(app=object())  # type: ignore[arg-type]
    with pytest.raises(InvalidCallbackError, match="got None"):
        deferred.after_response(None)  # type: ignore[call-overload]
    with pytest.raises(InvalidOptionError, match="reserved"):
        render_prometheus(deferred.stats(), labels={"__name__": "x"})
    page = render_prometheus(deferred.stats(), labels={"shard": 3})
    assert 'shard="3"' in page


async def test_control_characters_from_the_request_cannot_forge_log_lines(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """Control characters in a request path are escaped in log lines."""

    async def fails() -> None:
        raise ValueError("planned")

    @app.before_request
    async def everywhere() -> None:
        after_this_response(fails)  # The path matches no route: it runs for the 404.

    await app.test_client().get("/x%0D%0ACRITICAL GET /admin: user root%1B[2J")
    await wait(deferred.join())
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    line = logging.Formatter("%(message)s %(deferred_path)s").format(record).split("\nTrace")[0]
    assert "\r" not in line and "\n" not in line and "\x1b" not in line
    assert "/x\\r\\nCRITICAL GET /admin: user root\\x1b[2J" in record.getMessage()


@pytest.mark.skipif(
    QUART_VERSION >= (0, 23), reason="Quart 0.23's TaskGroup cancels the handler with the call"
)
async def test_sends_after_the_server_cancelled_the_call_go_nowhere_without_an_error(
    app: Quart,
) -> None:
    """The server cancels the ASGI call while Quart's handler task still streams: its later
    sends are dropped, as the server would drop them, and nothing reaches the loop's
    exception handler."""
    from quart import Response

    more = asyncio.Event()
    streaming = asyncio.Event()
    finished = asyncio.Event()

    @app.get("/")
    async def index() -> Response:
        async def body() -> Any:
            yield b"first"
            streaming.set()
            await more.wait()
            yield b"second"
            finished.set()

        after_this_response(asyncio.sleep, 0)
        return Response(body())

    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: problems.append(context))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = http_scope("/")
    call = asyncio.ensure_future(app.asgi_app(scope, receive, send))  # type: ignore[arg-type]
    await wait(streaming.wait())
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    more.set()
    await wait(finished.wait())
    for _ in range(10):
        await asyncio.sleep(0)
    gc.collect()
    loop.set_exception_handler(None)
    assert problems == []
    assert [m["type"] for m in sent][:2] == ["http.response.start", "http.response.body"]


async def test_shutdown_names_the_first_thousand_cancelled_jobs_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Logging each of a million cancelled jobs would outlast any drain: the log stays
    bounded, and still says how many of each job were lost."""
    app = Quart(__name__)
    deferred = QuartDeferred(app, shutdown_timeout=0.01)

    async def waits() -> None:
        await asyncio.Event().wait()

    @app.get("/")
    async def index() -> str:
        for _ in range(3000):
            after_this_response(waits)
        return "ok"

    async with app.test_app() as test_app:
        await test_app.test_client().get("/")
        await wait(until(lambda: deferred.stats().running == 1))
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    named = [m for m in messages if m.startswith("Cancelled tests.")]
    assert len(named) == 1000
    [summary] = [m for m in messages if m.startswith("Cancelled 2000 more jobs")]
    assert "2000 x tests.test_supervision." in summary
    assert counts(deferred.stats()) == Stats(scheduled=3000, cancelled=3000)


def test_work_left_when_the_event_loop_ends_is_named(caplog: pytest.LogCaptureFixture) -> None:
    """No lifespan, no drain: when asyncio.run() ends, the running job and the ones waiting
    behind it are logged by name and request, and counted as cancelled."""
    app = Quart(__name__)
    deferred = QuartDeferred(app, max_concurrency=1)

    @app.get("/<name>")
    async def index(name: str) -> str:
        after_this_response(asyncio.sleep, 30)
        return "ok"

    async def serve_two() -> None:
        client = app.test_client()
        await client.get("/first")
        await client.get("/second")
        await until(lambda: deferred.stats().running == 1)

    asyncio.run(serve_two())
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("for GET /first at shutdown: it was still running" in m for m in messages)
    assert any(
        "for GET /second at shutdown: it had not started; the event loop stopped" in m
        for m in messages
    )
    assert counts(deferred.stats()) == Stats(scheduled=2, cancelled=2)
