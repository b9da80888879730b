"""@deferred.task with a real journal file: what is written when, retries, dead jobs, bad input."""

from __future__ import annotations

import asyncio
from contextlib import closing
import logging
from pathlib import Path
import sqlite3
import time
from typing import Any

import pytest
from quart import g, has_app_context, has_request_context, Quart

from quart_deferred import (
    after_this_response,
    ContextError,
    current_job,
    CurrentJob,
    InvalidArgumentError,
    InvalidCallbackError,
    InvalidOptionError,
    JournalCounts,
    OverloadedError,
    QuartDeferred,
    render_prometheus,
)
from quart_deferred._sqlite_journal import SQLiteJournal

from .conftest import until, wait

seen: list[Any] = []
gate: dict[str, asyncio.Event] = {}


async def remember(value: object) -> None:
    """A task: note what it got, and what it could see."""
    seen.append((value, has_request_context(), has_app_context(), current_job()))


async def fail_always(value: object) -> None:
    seen.append(current_job().attempt)
    raise RuntimeError(f"no luck with {value}")


def plain_remember(value: object) -> None:
    seen.append((value, current_job().name))


@pytest.fixture(autouse=True)
def _clean() -> None:
    seen.clear()


def rows(path: Path) -> list[tuple[str, str, int]]:
    """(name, state, attempt) of every record in the journal file at *path*."""
    with closing(sqlite3.connect(path)) as connection:  # A with-block alone leaves it open.
        return connection.execute(
            "SELECT name, state, attempt FROM quart_deferred_jobs ORDER BY created"
        ).fetchall()


def journaled(tmp_path: Path, **options: Any) -> tuple[Quart, QuartDeferred, Path]:
    app = Quart(__name__)
    path = tmp_path / "journal.sqlite3"
    return app, QuartDeferred(app, journal=f"sqlite:///{path}", **options), path


@pytest.mark.parametrize("sync", ["normal", "full"])
async def test_a_task_runs_after_the_response_with_its_arguments_and_not_the_request(
    tmp_path: Path, sync: str
) -> None:
    """A task gets JSON round-tripped arguments, an app context, no request; its record is done
    (with the journal written on the loop, and with fsyncs on its thread)."""
    app, deferred, path = journaled(tmp_path)
    app.config["QUART_DEFERRED_JOURNAL_SYNC"] = sync
    task = deferred.task(remember)

    @app.get("/")
    async def index() -> str:
        g.user = "ann"
        after_this_response(task, ("a", 1), when="success")
        return "ok"

    async with app.test_app():
        response = await app.test_client().get("/")
        assert await deferred.wait_for(response) == []
        await deferred.join(timeout=5)
    [(value, in_request, in_app, job)] = seen
    assert value == ["a", 1]  # What the journal keeps: a list, as on replay.
    assert (in_request, in_app) == (False, True)
    assert job.name == "tests.test_tasks.remember" and job.attempt == 1
    assert rows(path) == [("tests.test_tasks.remember", "done", 0)]


async def test_the_record_is_on_disk_before_the_final_message_goes_to_the_server(
    tmp_path: Path,
) -> None:
    """At the send of the last body bytes, the journal file (read apart) already holds it."""
    app, deferred, path = journaled(tmp_path)
    task = deferred.task(remember)
    on_disk_at_final_send: list[list[tuple[str, str, int]]] = []

    @app.get("/")
    async def index() -> str:
        after_this_response(task, "x", when="success")
        return "ok"

    received = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        # The request, then (as a server does once the response is sent) the disconnect, which
        # Quart 0.23 waits for before its ASGI call returns.
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await received.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            on_disk_at_final_send.append(rows(path))
            received.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 1), "server": ("x", 80),
        "extensions": {},
    }  # fmt: skip
    async with app.test_app():
        await wait(app(scope, receive, send))  # type: ignore[arg-type]
        await deferred.join(timeout=5)
    assert on_disk_at_final_send == [[("tests.test_tasks.remember", "waiting", 0)]]
    assert rows(path) == [("tests.test_tasks.remember", "done", 0)]


async def test_a_success_task_of_a_failed_response_is_neither_kept_nor_run(tmp_path: Path) -> None:
    """A 500 response: the when="success" task is skipped and leaves no record; "failure" runs."""
    app, deferred, path = journaled(tmp_path)
    task = deferred.task(remember)

    @app.get("/")
    async def index() -> str:
        after_this_response(task, "on success", when="success")
        after_this_response(task, "on failure", when="failure")
        raise RuntimeError("the view failed")

    async with app.test_app():
        response = await app.test_client().get("/")
        assert response.status_code == 500
        await deferred.wait_for(response)
        await deferred.join(timeout=5)
    assert [value for value, *_ in seen] == ["on failure"]
    assert rows(path) == [("tests.test_tasks.remember", "done", 0)]
    stats = deferred.stats()
    assert stats.skipped == 1 and stats.journal == JournalCounts(waiting=0, dead=0, done=1)
    assert 'journal_jobs{state="done"} 1' in render_prometheus(stats)


async def test_a_failing_task_is_retried_then_kept_as_dead_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """retries=2: three attempts with the same id, then dead in the journal, an ERROR naming it."""
    app, deferred, path = journaled(tmp_path)
    task = deferred.task(retries=2, retry_delay=0.01)(fail_always)

    @app.get("/")
    async def index() -> str:
        after_this_response(task, "secret-free value")
        return "ok"

    async with app.test_app():
        await app.test_client().get("/")
        while len(seen) < 3 or deferred.stats().running:
            await wait(asyncio.sleep(0.01))
        await deferred.join(timeout=5)
    assert seen == [1, 2, 3]
    assert rows(path) == [("tests.test_tasks.fail_always", "dead", 3)]
    [dead] = [r for r in caplog.records if "failed its last attempt" in r.getMessage()]
    assert dead.levelno == logging.ERROR
    assert "tests.test_tasks.fail_always" in dead.getMessage()
    assert "(3 of 3)" in dead.getMessage() and "kept in the journal as dead" in dead.getMessage()
    assert "quart deferred retry" in dead.getMessage()
    assert "args=<1 positional and 0 keyword, not logged" in dead.getMessage()
    assert sum("retrying in" in r.getMessage() for r in caplog.records) == 2


async def test_jobs_left_in_the_journal_run_at_the_start_with_their_id(tmp_path: Path) -> None:
    """A record nobody holds (a process that was killed) runs before the first request."""
    app, deferred, path = journaled(tmp_path)
    deferred.task(remember)
    journal = sqlite3.connect(path)
    journal.executescript(
        "CREATE TABLE quart_deferred_jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
        "arguments TEXT NOT NULL, origin TEXT NOT NULL, created REAL NOT NULL, not_before REAL "
        "NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, owner TEXT, "
        "lease_until REAL, updated REAL NOT NULL, error TEXT)"
    )
    now = time.time()
    journal.execute(
        "INSERT INTO quart_deferred_jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ("job-1", "tests.test_tasks.remember", '[["left"], {}]', "GET /", now, now, 1,
         "waiting", "elsewhere:1:dead", now - 1, now, "RuntimeError: killed"),
    )  # fmt: skip
    journal.commit()
    journal.close()
    async with app.test_app():
        await deferred.join(timeout=5)
        [(value, _, _, job)] = seen
    assert value == "left"
    assert job == CurrentJob("job-1", "tests.test_tasks.remember", 2)
    assert rows(path) == [("tests.test_tasks.remember", "done", 1)]


async def test_a_job_of_an_unknown_task_is_logged_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record whose task this app does not define is not run, not lost, and named at start."""
    app, deferred, path = journaled(tmp_path)
    first = Quart(__name__)
    other = QuartDeferred(first, journal=f"sqlite:///{path}", shutdown_timeout=0.01)
    blocked = other.task(name="gone.module.task")(fail_always)

    @first.get("/")
    async def index() -> str:
        after_this_response(blocked, 1)
        return "ok"

    async with first.test_app():  # Writes the record, then its process "ends" at once.
        await first.test_client().get("/")
    async with app.test_app():
        await deferred.join(timeout=5)
    [line] = [r for r in caplog.records if "does not know" in r.getMessage()]
    assert line.levelno == logging.ERROR and "1 x gone.module.task" in line.getMessage()
    assert ("gone.module.task", "waiting") in [(name, state) for name, state, _ in rows(path)]


async def test_arguments_the_journal_cannot_keep_are_refused_at_the_call(tmp_path: Path) -> None:
    """An object argument: InvalidArgumentError naming the parameter, before anything is held."""
    app, deferred, _ = journaled(tmp_path)
    task = deferred.task(remember)
    errors: list[str] = []

    @app.get("/")
    async def index() -> str:
        for args in ((object(),), (1, 2)):
            try:
                after_this_response(task, *args)
            except InvalidArgumentError as error:
                errors.append(str(error))
        return "ok"

    async with app.test_app():
        await app.test_client().get("/")
    assert "argument value=<object object" in errors[0]
    assert "pass plain values" in errors[0]
    assert "cannot call the task tests.test_tasks.remember" in errors[1]
    assert deferred.stats().scheduled == 0


def test_a_task_must_be_a_module_level_function(tmp_path: Path) -> None:
    """Another process finds a task by module and name: nested functions and lambdas are refused."""
    _, deferred, _ = journaled(tmp_path)

    async def nested() -> None: ...

    with pytest.raises(InvalidCallbackError, match="defined at the top level of a module"):
        deferred.task(nested)
    with pytest.raises(InvalidCallbackError, match="defined at the top level"):
        deferred.task(lambda: None)
    assert deferred.task(name="tests.nested")(nested).name == "tests.nested"
    with pytest.raises(InvalidCallbackError, match="Two tasks are registered as tests.nested"):
        deferred.task(name="tests.nested")(remember)
    with pytest.raises(InvalidArgumentError, match="retries=-1"):
        deferred.task(retries=-1)(remember)


def test_a_journal_url_that_is_not_one_is_refused_at_init() -> None:
    """QUART_DEFERRED_JOURNAL must be sqlite:///path or None: said at init_app."""
    with pytest.raises(InvalidOptionError, match="four slashes for an absolute path"):
        QuartDeferred(Quart(__name__), journal="/var/lib/deferred.sqlite3")
    app = Quart(__name__)
    app.config["QUART_DEFERRED_JOURNAL_SYNC"] = "fsync"
    with pytest.raises(InvalidOptionError, match="must be 'normal' .* or 'full'"):
        QuartDeferred(app, journal="sqlite:///x.sqlite3")


async def test_a_journal_that_cannot_be_written_is_a_clear_error_at_start(tmp_path: Path) -> None:
    """A missing folder: the app does not start, and the error says which folder and what to do."""
    app = Quart(__name__)
    QuartDeferred(app, journal=f"sqlite:///{tmp_path}/missing/journal.sqlite3")
    with pytest.raises(Exception, match="its folder .*missing does not exist. Create it"):
        async with app.test_app():
            pass


async def test_without_a_journal_a_task_runs_in_memory_with_its_retries() -> None:
    """No journal: nothing is written, the task still retries and gets current_job()."""
    app = Quart(__name__)
    deferred = QuartDeferred(app)
    task = deferred.task(retries=1, retry_delay=0)(fail_always)
    plain = deferred.task(plain_remember)

    @app.get("/")
    async def index() -> str:
        after_this_response(task, 1)
        after_this_response(plain, 2)
        return "ok"

    async with app.test_app():
        await app.test_client().get("/")
        while len(seen) < 3:
            await wait(asyncio.sleep(0.01))
        await deferred.join(timeout=5)
    assert sorted(map(str, seen)) == ["(2, 'tests.test_tasks.plain_remember')", "1", "2"]
    assert deferred.stats().failed == 2


def test_current_job_outside_a_task_is_a_context_error() -> None:
    """current_job() names the job a task runs for; elsewhere it says so."""
    with pytest.raises(ContextError, match="outside a task"):
        current_job()


async def test_a_task_started_with_start_soon_is_journaled(tmp_path: Path) -> None:
    """start_soon(task, ...) writes the record too, and runs it."""
    app, deferred, path = journaled(tmp_path)
    task = deferred.task(remember)
    async with app.test_app():
        async with app.app_context():
            deferred.start_soon(task, "soon")
        await deferred.join(timeout=5)
    assert [value for value, *_ in seen] == ["soon"]
    assert rows(path) == [("tests.test_tasks.remember", "done", 0)]


async def test_a_task_refused_by_start_soon_is_not_written(tmp_path: Path) -> None:
    """A start_soon refused with OverloadedError leaves no record behind to run later."""
    app, deferred, path = journaled(tmp_path, max_concurrency=1, max_pending=1)
    task = deferred.task(remember)
    release = asyncio.Event()
    async with app.test_app():
        async with app.app_context():
            deferred.start_soon(release.wait)
            await wait(until(lambda: deferred.stats().running == 1))
            deferred.start_soon(release.wait)  # Waiting: the limit is reached.
            with pytest.raises(OverloadedError, match="start_soon"):
                deferred.start_soon(task, "refused")
        release.set()
        await deferred.join(timeout=5)
    assert seen == []
    assert rows(path) == []


async def test_the_cli_lists_retries_and_purges_jobs(tmp_path: Path) -> None:
    """quart deferred list / retry / purge, read through the commands' own output."""
    app, deferred, path = journaled(tmp_path)
    task = deferred.task(retries=0)(fail_always)
    fine = deferred.task(remember)

    @app.get("/")
    async def index() -> str:
        after_this_response(task, 1)
        after_this_response(fine, 2)
        return "ok"

    async with app.test_app():
        await app.test_client().get("/")
        await deferred.join(timeout=5)
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["deferred", "list", "dead"])
    assert listed.exit_code == 0, listed.output
    first, dead = listed.output.splitlines()
    assert first == "waiting=0 dead=1 done=1"
    job_id = dead.split()[0]
    assert "tests.test_tasks.fail_always" in dead and "attempts=1 for GET /" in dead
    assert "last error: RuntimeError: no luck with 1" in dead
    assert runner.invoke(args=["deferred", "retry"]).exit_code == 2  # Neither an id nor --all.
    missing = runner.invoke(args=["deferred", "retry", "no-such-id"])
    assert missing.exit_code == 1 and "No dead job no-such-id" in missing.output
    revived = runner.invoke(args=["deferred", "retry", job_id])
    assert revived.output == "1 dead job waiting again.\n"
    assert rows(path)[0][:2] == ("tests.test_tasks.fail_always", "waiting")
    assert runner.invoke(args=["deferred", "purge"]).output == "Purged 0 done jobs.\n"
    purged = runner.invoke(args=["deferred", "purge", "--older-than", "0s"])
    assert purged.output == "Purged 1 done job.\n"
    bad = runner.invoke(args=["deferred", "purge", "--older-than", "soon"])
    assert bad.exit_code == 2 and "not an age such as 30s" in bad.output
    assert [state for _, state, _ in rows(path)] == ["waiting"]


async def test_finished_jobs_older_than_journal_keep_are_removed_in_the_background(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal does not grow for ever: done records past QUART_DEFERRED_JOURNAL_KEEP go,
    in small transactions after the start; dead, waiting and recent done records stay."""
    caplog.set_level(logging.INFO, logger="quart_deferred")
    app, deferred, path = journaled(tmp_path)
    app.config["QUART_DEFERRED_JOURNAL_KEEP"] = 86400.0
    deferred.task(remember)
    SQLiteJournal(f"sqlite:///{path}").connect().close()  # The schema.
    old, recent = time.time() - 8 * 86400, time.time() - 60
    with closing(sqlite3.connect(path)) as journal, journal:
        journal.executemany(
            "INSERT INTO quart_deferred_jobs (id, name, arguments, origin, created, not_before, "
            "attempt, state, updated) VALUES (?, 'tests.test_tasks.remember', '[[1], {}]', "
            "'GET /', ?, ?, 1, ?, ?)",
            [(f"old-{n}", old, old, "done", old) for n in range(1234)]
            + [("recent", recent, recent, "done", recent), ("dead", old, old, "dead", old)],
        )
    async with app.test_app():
        await wait(until(lambda: len(rows(path)) == 2))
    assert sorted(state for _, state, _ in rows(path)) == ["dead", "done"]
    [line] = [r for r in caplog.records if "finished jobs" in r.getMessage()]
    assert "removed 1234 finished jobs older than 1.0d" in line.getMessage()


def test_journal_keep_must_be_seconds_or_none(tmp_path: Path) -> None:
    """A bad QUART_DEFERRED_JOURNAL_KEEP is refused at init, naming the key."""
    app = Quart(__name__)
    app.config["QUART_DEFERRED_JOURNAL_KEEP"] = "7d"
    with pytest.raises(InvalidOptionError, match="QUART_DEFERRED_JOURNAL_KEEP"):
        QuartDeferred(app, journal=f"sqlite:///{tmp_path / 'journal.sqlite3'}")


async def test_a_journal_path_with_uri_characters_is_read_as_it_is(tmp_path: Path) -> None:
    """stats() reads the journal read-only through a file: URI; '?', '#', '%' and spaces in
    the path are quoted, not taken for the URI's query or fragment."""
    folder = tmp_path / "we?ird #dir%20"
    folder.mkdir()
    app = Quart(__name__)
    deferred = QuartDeferred(app, journal=f"sqlite:///{folder / 'jobs 1.sqlite3'}")
    task = deferred.task(remember)

    @app.get("/")
    async def index() -> str:
        after_this_response(task, "x")
        return "ok"

    async with app.test_app():
        await app.test_client().get("/")
        await deferred.join(timeout=5)
        assert deferred.stats().journal == JournalCounts(waiting=0, dead=0, done=1)
