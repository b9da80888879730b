"""The journal's writes on the event loop: never a blocked loop, whatever holds the file."""

from __future__ import annotations

import asyncio
from contextlib import closing
from pathlib import Path
import sqlite3
import sys
import time

import pytest
from quart import Quart

from quart_deferred import after_this_response, QuartDeferred
from quart_deferred._sqlite_journal import SQLiteJournal

seen: list[str] = []

# Another process that holds the journal's write lock until told to let go.
LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
"""


async def longest_pause(seconds: float) -> float:
    """Turn with the loop for *seconds*; return the longest it was held beyond a 10 ms sleep."""
    loop = asyncio.get_running_loop()
    lag, started = 0.0, loop.time()
    last = started
    while last - started < seconds:
        await asyncio.sleep(0.01)
        now = loop.time()
        lag, last = max(lag, now - last - 0.01), now
    return lag


async def note(value: str) -> None:
    """A task: note that it ran."""
    seen.append(value)


async def test_a_journal_locked_by_another_process_does_not_block_the_event_loop(
    tmp_path: Path,
) -> None:
    """While another process holds the write lock, the loop serves on; the record waits for it.

    The response whose task cannot be written yet is not complete until the lock
    is let go of; stats() reads the journal without waiting for the lock.
    """
    seen.clear()
    app = Quart(__name__)
    path = tmp_path / "journal.sqlite3"
    deferred = QuartDeferred(app, journal=f"sqlite:///{path}")
    task = deferred.task(note)

    @app.get("/<value>")
    async def index(value: str) -> str:
        after_this_response(task, value, when="success")
        return "ok"

    async with app.test_app():
        assert (await app.test_client().get("/before")).status_code == 200
        await deferred.join(timeout=5)
        locker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            LOCKER,
            str(path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert locker.stdin is not None and locker.stdout is not None
        try:
            assert await asyncio.wait_for(locker.stdout.readline(), 10) == b"locked\n"
            request = asyncio.ensure_future(app.test_client().get("/locked"))
            lag = await longest_pause(1.0)  # The loop keeps turning while the lock is held.
            reading = time.perf_counter()
            counts = deferred.stats().journal
            read_in = time.perf_counter() - reading
            assert not request.done()  # Its record is not on disk, so its response is not sent.
        finally:
            locker.stdin.write(b"go\n")
            await locker.stdin.drain()
            await asyncio.wait_for(locker.wait(), 10)
        response = await asyncio.wait_for(request, 15)
        assert response.status_code == 200
        await deferred.join(timeout=5)
    assert lag < 0.1, f"the event loop stalled for {lag:.3f}s"
    assert read_in < 0.5, f"stats() waited {read_in:.3f}s for the lock"
    assert counts is not None and counts.done == 1
    assert seen == ["before", "locked"]


async def test_many_waiting_jobs_of_unknown_tasks_do_not_stall_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """50,000 records of a task this app does not know (a deploy renamed it), read at every
    claim (every third of the lease): the loop keeps turning, and they are named once."""
    app = Quart(__name__)
    path = tmp_path / "journal.sqlite3"
    deferred = QuartDeferred(app, journal=f"sqlite:///{path}", lease=0.3)
    deferred.task(note)
    SQLiteJournal(f"sqlite:///{path}").connect().close()  # The schema.
    old = time.time() - 60
    with closing(sqlite3.connect(path)) as journal, journal:
        journal.executemany(
            "INSERT INTO quart_deferred_jobs (id, name, arguments, origin, created, not_before, "
            "attempt, state, updated) VALUES (?, 'renamed.task', '[[1], {}]', 'GET /', ?, ?, 0, "
            "'waiting', ?)",
            [(f"job-{n}", old, old, old) for n in range(50_000)],
        )
    async with app.test_app():  # Startup reads them once, before serving: not measured.
        lag = await longest_pause(1.0)  # Three claims or more.
    assert lag < 0.1, f"the event loop stalled for {lag:.3f}s"
    [line] = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert "holds 50000 waiting jobs" in line and "50000 x renamed.task" in line
