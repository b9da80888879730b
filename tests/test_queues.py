"""enqueue_after_response with real Redis servers and real Celery and taskiq workers.

Without a ``redis-server`` binary these tests skip, saying how to install one;
with ``QUART_DEFERRED_REQUIRE_REDIS=1`` (as ``.ci/run`` sets) they fail instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
import importlib
import logging
import os
import shutil
import socket
import subprocess
import sys
from types import ModuleType
from typing import Any

import httpx
import pytest
from quart import Quart, Response
import redis
import redis.asyncio

from quart_deferred import (
    after_this_response,
    ContextError,
    enqueue_after_response,
    InvalidArgumentError,
    InvalidCallbackError,
    InvalidOptionError,
    QuartDeferred,
    Stats,
)

from .conftest import counts, wait
from .servers import running

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTERS = ["celery", "taskiq"]


def _redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        reason = (
            "redis-server is not installed, so the task queue tests cannot run. Install it "
            "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)."
        )
        if os.environ.get("QUART_DEFERRED_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason} QUART_DEFERRED_REQUIRE_REDIS=1 asks for them to run.")
        pytest.skip(reason)
    return path


class RedisServer:
    """A throwaway redis-server on a free port of 127.0.0.1, with nothing saved to disk."""

    def __init__(self, port: int | None = None) -> None:
        if port is None:
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
        self.port = port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [_redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:  # Until it says it is ready; it then keeps quiet.
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server on port {self.port} exited before it was ready")
        self.client = redis.Redis.from_url(self.url)

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture(name="redis_server", scope="module")
def _redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def _start_worker(command: list[str], url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "QUART_DEFERRED_TEST_REDIS": url, "PYTHONPATH": ROOT}
    return subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.fixture(name="tasks", scope="module")
def _tasks(redis_server: RedisServer) -> Iterator[dict[str, ModuleType]]:
    """The task modules, bound to the module's Redis, with a real worker for each."""
    os.environ["QUART_DEFERRED_TEST_REDIS"] = redis_server.url
    try:
        modules = {
            name: importlib.reload(importlib.import_module(f"tests.queue_apps.{name}_tasks"))
            for name in ADAPTERS
        }
    finally:
        del os.environ["QUART_DEFERRED_TEST_REDIS"]
    workers = [
        _start_worker(
            ["celery", "-A", "tests.queue_apps.celery_tasks", "worker", "--pool=solo"]
            + ["--without-heartbeat", "--without-gossip", "--without-mingle", "-Q", "celery"],
            redis_server.url,
        ),
        _start_worker(
            ["taskiq", "worker", "tests.queue_apps.taskiq_tasks:broker", "--workers", "1"],
            redis_server.url,
        ),
    ]
    yield modules
    for worker in workers:
        worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.fixture(name="clean_redis")
def _clean_redis(redis_server: RedisServer) -> RedisServer:
    redis_server.client.flushdb()
    return redis_server


@asynccontextmanager
async def broker_lifespan(app: Quart, tasks: ModuleType) -> AsyncIterator[None]:
    """What an app does with a taskiq broker: start it with the app, close it after."""
    brokers = [getattr(tasks, "broker", None), getattr(tasks, "held_broker", None)]
    for broker in brokers:
        if broker is not None:
            await broker.startup()
    try:
        yield
    finally:
        for broker in brokers:
            if broker is not None:
                await broker.shutdown()


@dataclass
class Queue:
    """One adapter's tasks, and the Redis list its ``held`` task's messages wait in."""

    name: str
    tasks: ModuleType
    held_list: str


@pytest.fixture(name="queue", params=ADAPTERS)
def _queue(request: pytest.FixtureRequest, tasks: dict[str, ModuleType]) -> Queue:
    name = request.param
    return Queue(name, tasks[name], "held" if name == "celery" else "taskiq:held")


async def test_the_job_is_sent_only_after_the_response_has_gone_out(
    app: Quart, deferred: QuartDeferred, queue: Queue, clean_redis: RedisServer
) -> None:
    """While the response is still streaming, the broker has nothing; once it is out, one job."""
    finish = asyncio.Event()

    @app.get("/signup")
    async def signup() -> Response:
        enqueue_after_response(queue.tasks.held, "ada@example.com")

        async def body() -> Any:
            yield b"created, "
            await finish.wait()
            yield b"welcome"

        return Response(body(), status=201)

    async with broker_lifespan(app, queue.tasks), running(app) as url:
        async with httpx.AsyncClient(base_url=url) as http, http.stream("GET", "/signup") as reply:
            assert reply.status_code == 201
            assert clean_redis.client.llen(queue.held_list) == 0  # View done, body not.
            finish.set()
            assert await reply.aread() == b"created, welcome"
        await deferred.join(timeout=10)
    assert clean_redis.client.llen(queue.held_list) == 1
    assert counts(deferred.stats()).succeeded == 1


async def test_a_real_worker_runs_the_job(
    app: Quart, deferred: QuartDeferred, queue: Queue, clean_redis: RedisServer
) -> None:
    """A task sent after the response is run by a real Celery or taskiq worker."""

    @app.post("/signup")
    async def signup() -> tuple[str, int]:
        enqueue_after_response(queue.tasks.welcome_mail, "ada@example.com", subject="Welcome")
        return "created", 201

    async with broker_lifespan(app, queue.tasks):
        reply = await app.test_client().post("/signup")
        assert reply.status_code == 201
        await deferred.join(timeout=10)
    async with redis.asyncio.Redis.from_url(clean_redis.url) as client:
        done = await client.blpop([f"{queue.name}:done"], timeout=60)  # The worker's own write.
    assert done == (f"{queue.name}:done".encode(), b"ada@example.com Welcome")


async def test_a_failing_request_sends_nothing(
    app: Quart, deferred: QuartDeferred, queue: Queue, clean_redis: RedisServer
) -> None:
    """A 500 sends no task (when='success' by default), and the skip is counted."""

    @app.post("/signup")
    async def signup() -> tuple[str, int]:
        enqueue_after_response(queue.tasks.held, "ada@example.com")
        return "the database said no", 500

    async with broker_lifespan(app, queue.tasks):
        reply = await app.test_client().post("/signup")
        await deferred.join(timeout=10)
    assert reply.status_code == 500
    assert clean_redis.client.llen(queue.held_list) == 0
    assert counts(deferred.stats()).skipped == 1


def _task_on(adapter: str, url: str) -> tuple[Any, Any]:
    """A task bound to the broker at *url*, and the taskiq broker (or None)."""
    if adapter == "celery":
        from celery import Celery

        celery_app = Celery("stopped", broker=url)

        def lost_sync(address: str) -> None:
            pass

        return celery_app.task(name="tests.celery.lost")(lost_sync), None
    from taskiq_redis import ListQueueBroker

    broker = ListQueueBroker(url, queue_name="lost")

    async def lost(address: str) -> None:
        pass

    return broker.task(task_name="tests.taskiq.lost")(lost), broker


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_with_the_broker_stopped_the_app_answers_and_the_failure_is_logged(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture, adapter: str
) -> None:
    """With the broker gone, the app still answers and the lost send is logged with its
    arguments."""
    server = RedisServer()
    task, broker = _task_on(adapter, server.url)
    if broker is not None:
        await broker.startup()
    server.stop()  # The broker goes away after the app connected to it.
    app.config["QUART_DEFERRED_ENQUEUE_RETRIES"] = 1
    app.config["QUART_DEFERRED_LOG_ARGUMENTS"] = True  # Enough to replay the job by hand.

    @app.post("/signup")
    async def signup() -> tuple[str, int]:
        enqueue_after_response(task, "ada@example.com")
        return "created", 201

    client = app.test_client()
    replies = [await client.post("/signup"), await client.post("/signup")]
    await deferred.join(timeout=30)
    if broker is not None:
        await broker.shutdown()
    assert [reply.status_code for reply in replies] == [201, 201]
    stats = counts(deferred.stats())
    assert (stats.scheduled, stats.failed) == (2, 2)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    name = f"tests.{adapter}.lost"
    for record in errors:
        assert record.name == "quart_deferred"
        assert f"enqueue({name}) for POST /signup failed" in record.getMessage()
        assert record.exc_info is not None
        message = str(record.exc_info[1])
        assert f"Could not send task {name} with args=('ada@example.com',) kwargs={{}}" in message
        assert "after 2 attempts" in message


async def test_pending_sends_are_flushed_at_shutdown_before_the_apps_own_shutdown_code(
    app: Quart, deferred: QuartDeferred, queue: Queue, clean_redis: RedisServer
) -> None:
    """Three sends wait behind a blocked job when shutdown is asked for; they are in the
    broker when it is done, and were sent before any after_serving or while_serving
    shutdown code ran (the broker is closed there)."""
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 1
    unblock = asyncio.Event()
    unfinished_in_shutdown_code: list[int] = []

    async def blocker() -> None:
        await unblock.wait()

    def unfinished() -> int:
        stats = deferred.stats()
        return stats.waiting + stats.running

    @app.while_serving
    async def watch() -> AsyncGenerator[None, None]:
        yield
        unfinished_in_shutdown_code.append(unfinished())

    @app.after_serving
    async def close() -> None:
        unfinished_in_shutdown_code.append(unfinished())

    @app.post("/signup/<int:number>")
    async def signup(number: int) -> str:
        if number == 0:
            after_this_response(blocker)
        else:
            enqueue_after_response(queue.tasks.held, f"user{number}@example.com")
        return "created"

    async with broker_lifespan(app, queue.tasks), app.test_app() as test_app:
        client = test_app.test_client()
        for number in range(4):
            await client.post(f"/signup/{number}")
        assert (deferred.stats().running, deferred.stats().waiting) == (1, 3)
        unblock.set()  # Shutdown starts next, with all four jobs still to finish.
    assert unfinished_in_shutdown_code == [0, 0]
    assert clean_redis.client.llen(queue.held_list) == 3
    assert counts(deferred.stats()).succeeded == 4


async def test_outside_a_request_and_unknown_tasks_are_clear_errors(
    app: Quart, tasks: dict[str, ModuleType]
) -> None:
    """enqueue_after_response outside a request, or with an unknown task, is refused at the call."""
    with pytest.raises(ContextError, match=r"task\.delay\(\.\.\.\) for Celery"):
        enqueue_after_response(tasks["celery"].held, "ada@example.com")
    errors: list[Exception] = []

    @app.get("/")
    async def index() -> str:
        try:
            enqueue_after_response(print, "not a task")
        except InvalidCallbackError as error:
            errors.append(error)
        return "ok"

    await app.test_client().get("/")
    [error] = errors
    assert isinstance(error, TypeError)
    assert "takes a Celery task" in str(error) and "taskiq task" in str(error)


def test_importing_the_package_imports_no_queue_library() -> None:
    """Importing the package imports neither Celery nor taskiq."""
    code = "import quart_deferred, sys; print(sorted({'celery', 'taskiq'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


async def test_the_celery_example_end_to_end() -> None:
    """examples/celery_signup.py with its own Redis and a real worker, as the README runs it."""
    from examples import celery_signup

    server = RedisServer()
    celery_signup.celery_app.conf.broker_url = server.url
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "celery",
        "-A",
        "examples.celery_signup:celery_app",
        "worker",
        "--pool=solo",
        "--loglevel=INFO",
        cwd=ROOT,
        env={**os.environ, "CELERY_BROKER_URL": server.url, "PYTHONPATH": ROOT},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        client = celery_signup.app.test_client()
        bad = await client.post("/signup", form={"email": "nobody"})
        good = await client.post("/signup", form={"email": "ada@example.com"})
        await celery_signup.deferred.join(timeout=10)
        assert (bad.status_code, good.status_code) == (400, 201)
        assert worker.stderr is not None
        line = await wait(_line_with(worker.stderr, b"welcome e-mail sent to"), timeout=60)
        assert line.rstrip().endswith(b"welcome e-mail sent to ada@example.com")
    finally:
        worker.terminate()
        await worker.wait()
        server.stop()
    assert counts(celery_signup.deferred.stats()) == Stats(scheduled=1, succeeded=1)


async def _line_with(stream: asyncio.StreamReader, text: bytes) -> bytes:
    seen = []
    async for line in stream:
        if text in line:
            return line
        seen.append(line.decode(errors="replace"))
    raise AssertionError(f"the worker exited without printing {text!r}:\n{''.join(seen)}")


class ListAdapter:
    """A queue of our own: tasks are names in a list, sent with an async send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.failures = 0

    def accepts(self, task: object) -> bool:
        return isinstance(task, str) and task.startswith("list:")

    def task_name(self, task: Any) -> str:
        return str(task)

    async def send(self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the list is busy")
        self.sent.append((task, args, kwargs))


async def test_a_registered_adapter_is_used_and_retried(
    app: Quart, deferred: QuartDeferred
) -> None:
    """A registered QueueAdapter sends the task, retried after failed attempts."""
    adapter = ListAdapter()
    adapter.failures = 2  # Two failed sends, then it goes through on the third attempt.
    deferred.add_queue(adapter)

    @app.post("/signup")
    async def signup() -> str:
        enqueue_after_response("list:welcome", "ada@example.com", subject="Hi")
        return "created"

    await app.test_client().post("/signup")
    await deferred.join(timeout=10)
    assert adapter.sent == [("list:welcome", ("ada@example.com",), {"subject": "Hi"})]
    assert counts(deferred.stats()) == Stats(scheduled=1, succeeded=1)
    with pytest.raises(InvalidCallbackError, match=r"lacks the QueueAdapter methods"):
        deferred.add_queue(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_an_argument_the_queue_cannot_encode_is_refused_at_the_call(
    app: Quart, deferred: QuartDeferred, adapter: str
) -> None:
    """Found in the view, where the 500 says so, not after the 201 in a log line."""
    task, _ = _task_on(adapter, "redis://127.0.0.1:1/0")  # Never reached.
    errors: list[str] = []

    @app.post("/signup")
    async def signup() -> tuple[str, int]:
        try:
            enqueue_after_response(task, object())
        except InvalidArgumentError as error:
            errors.append(str(error))
            return "refused", 400
        return "created", 201

    assert (await app.test_client().post("/signup")).status_code == 400
    [message] = errors
    assert f"cannot send tests.{adapter}.lost: its arguments do not encode" in message
    assert "such as the user's id rather than the user object" in message
    assert counts(deferred.stats()) == Stats()


async def test_what_is_sent_is_what_the_view_passed_at_the_call(
    app: Quart, deferred: QuartDeferred, queue: Queue, clean_redis: RedisServer
) -> None:
    """The arguments are encoded at the call: a list the view changes afterwards is sent
    as it was."""

    @app.post("/signup")
    async def signup() -> str:
        addresses = ["ada@example.com"]
        enqueue_after_response(queue.tasks.held, addresses)
        addresses.append("mallory@example.com")
        return "created"

    async with broker_lifespan(app, queue.tasks):
        await app.test_client().post("/signup")
        await deferred.join(timeout=10)
    [raw] = clean_redis.client.lrange(queue.held_list, 0, -1)
    assert b"ada@example.com" in raw
    assert b"mallory" not in raw


class RefusingAdapter(ListAdapter):
    """Its send always raises the same TypeError, as a task with a wrong signature would."""

    attempts = 0

    async def send(self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.attempts += 1
        raise TypeError("welcome() got an unexpected keyword argument 'subjet'")


async def test_an_error_retrying_cannot_fix_is_not_retried(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """A send error that retrying cannot fix (a TypeError) is logged once, not retried."""
    adapter = RefusingAdapter()
    deferred.add_queue(adapter)

    @app.post("/signup")
    async def signup() -> str:
        enqueue_after_response("list:welcome", "ada@example.com", subjet="Hi")
        return "created"

    await app.test_client().post("/signup")
    await deferred.join(timeout=10)
    assert adapter.attempts == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = str(record.exc_info[1]) if record.exc_info else ""
    assert "after 1 attempt: TypeError(" in message
    assert "will not go away by retrying" in message


async def test_arguments_are_not_logged_unless_asked_for_and_then_bounded(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed send's log line names the task, not the e-mail address, password or token it
    was given; with QUART_DEFERRED_LOG_ARGUMENTS each repr is cut, or a function decides."""
    adapter = ListAdapter()
    adapter.failures = 100
    deferred.add_queue(adapter)
    app.config["QUART_DEFERRED_ENQUEUE_RETRIES"] = 0

    @app.post("/signup")
    async def signup() -> str:
        enqueue_after_response(
            "list:welcome", "ada@example.com", password="hunter2", blob=b"x" * 5_000_000
        )
        return "created"

    def messages() -> list[str]:
        return [str(r.exc_info[1]) for r in caplog.records if r.exc_info]

    client = app.test_client()
    await client.post("/signup")
    await deferred.join(timeout=10)
    [hidden] = messages()
    assert "ada@example.com" not in hidden and "hunter2" not in hidden
    assert "args=<1 positional and 2 keyword, not logged" in hidden

    caplog.clear()
    app.config["QUART_DEFERRED_LOG_ARGUMENTS"] = True
    await client.post("/signup")
    await deferred.join(timeout=10)
    [shown] = messages()
    assert "'ada@example.com'" in shown
    assert len(shown) < 2_000
    assert "more characters>" in shown

    caplog.clear()
    app.config["QUART_DEFERRED_LOG_ARGUMENTS"] = lambda args, kwargs: f"user {args[0][:3]}..."
    await client.post("/signup")
    await deferred.join(timeout=10)
    [redacted] = messages()
    assert "with user ada... after 1 attempt" in redacted


async def test_a_broker_that_never_answers_times_out_each_send(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that accepts the connection and never answers: every send gives up after its
    attempts' deadlines and is logged; no thread or drain is held by it forever."""
    silent_clients: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent_clients.append(writer)  # Read nothing, answer nothing.

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    task, _ = _task_on("celery", f"redis://127.0.0.1:{port}/0")
    app.config.update(
        QUART_DEFERRED_ENQUEUE_TIMEOUT=0.2,
        QUART_DEFERRED_ENQUEUE_RETRIES=1,
        QUART_DEFERRED_THREADS=8,
    )

    @app.post("/signup")
    async def signup() -> str:
        enqueue_after_response(task, "ada@example.com")
        return "created"

    client = app.test_client()
    replies = await asyncio.gather(*(client.post("/signup") for _ in range(20)))
    try:
        await deferred.join(timeout=20)
    finally:
        server.close()
        for writer in silent_clients:
            writer.close()
    assert [reply.status_code for reply in replies] == [200] * 20
    assert counts(deferred.stats()) == Stats(scheduled=20, failed=20)
    failures = [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert len(failures) == 20
    assert all("after 2 attempts" in message for message in failures)


async def test_enqueue_config_set_after_init_app_is_checked_at_the_call(
    app: Quart, deferred: QuartDeferred
) -> None:
    """QUART_DEFERRED_ENQUEUE_RETRIES=-1 set later used to mean no send at all, counted as a
    success; now the call says what is wrong."""
    deferred.add_queue(ListAdapter())
    app.config["QUART_DEFERRED_ENQUEUE_RETRIES"] = -1
    errors: list[str] = []

    @app.post("/signup")
    async def signup() -> str:
        try:
            enqueue_after_response("list:welcome", "ada@example.com")
        except InvalidOptionError as error:
            errors.append(str(error))
        return "created"

    await app.test_client().post("/signup")
    assert errors == ["QUART_DEFERRED_ENQUEUE_RETRIES must be a whole number of 0 or more, got -1."]
