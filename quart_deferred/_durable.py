"""How tasks run: attempts and retries, and, with a journal, their records and leases.

Without a journal a task runs in memory, as any job does, with its retries.
With one, a task's record is written before the message that completes its
response goes to the server (see ``_exchange.Exchange._send_final``), held
by this process under a lease it renews, marked done or dead as its
attempts end, and let go of at shutdown if it has not finished, so that
the next process runs it. The claim of records that no live process holds,
at the start and after it, and the lease itself are in _lease.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from contextvars import Context, copy_context
import functools
import itertools
import logging
import os
import random
import socket
import time
from typing import Any
import uuid

from quart import Quart

from ._config import log_arguments, show_arguments
from ._journal import Journal, Record
from ._lease import Lease
from ._sqlite_journal import SQLiteJournal
from ._stepping import in_context
from .exceptions import InvalidOptionError
from .jobs import Batch, Job, log_fields, NO_KWARGS, tally, When
from .runner import TaskRunner
from .tasks import CurrentJob, Retrying, run_as, Task, TaskCall

logger = logging.getLogger("quart_deferred")

_ERROR_TEXT = 500  # Characters of an attempt's error kept in the journal.


def open_journal(url: object, sync: object = "normal") -> Journal:
    """Return the store that *url* names (not yet opened): only ``sqlite:///path`` for now."""
    if sync not in ("normal", "full"):
        msg = (
            f"QUART_DEFERRED_JOURNAL_SYNC must be 'normal' (commits survive the process: a "
            f"crash, SIGKILL) or 'full' (they survive a power loss too, at an fsync per "
            f"commit), got {sync!r}."
        )
        raise InvalidOptionError(msg)
    if not isinstance(url, str) or not url.startswith("sqlite:///") or url == "sqlite:///":
        msg = (
            "QUART_DEFERRED_JOURNAL must be a URL such as 'sqlite:////var/lib/myapp/"
            "deferred.sqlite3' (four slashes for an absolute path, three for one relative "
            f"to the working directory), or None to keep jobs in memory only; got {url!r}."
        )
        raise InvalidOptionError(msg)
    return SQLiteJournal(url, sync)


class Runtime:
    """What one app keeps for its tasks: the journal, if any, its lease, the retries waiting."""

    def __init__(
        self,
        app: Quart,
        tasks: Mapping[str, Task[..., Any]],
        journal: Journal | None,
        lease: float,
        runner_of: Callable[[], TaskRunner],
        config_of: Callable[[], Mapping[str, Any]],
    ) -> None:
        self.app = app
        self.tasks = tasks
        self.journal = journal
        self.lease = lease
        self._runner_of = runner_of
        self._config_of = config_of
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Job ids: 16 random hex digits for this runtime, then a count (no system call each).
        self._ids = uuid.uuid4().hex[:16]
        self._counter = itertools.count()
        self._opened = False
        # Calls waiting for their next attempt: held in their runner's pending count
        # meanwhile, so that join() and the drain wait for a retry that is due.
        self._retries: dict[str, tuple[asyncio.TimerHandle, TaskCall, TaskRunner]] = {}
        self._lease: Lease | None = None  # With a journal, once started.

    # Scheduling

    def job_for(
        self,
        task: Task[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        when: When,
        key: str | None,
        caller: str,
        origin: str,
    ) -> Job:
        """Encode a call of *task* (a clear error for arguments it cannot keep) as a job."""
        encoded = task.encode(args, kwargs, caller)
        call = TaskCall(task, f"{self._ids}{next(self._counter):08x}", encoded, origin, time.time())
        call.runtime = self
        call.when = when
        return Job(call, (), NO_KWARGS, True, when, key)

    def ensure_open(self) -> Journal:
        journal = self.journal
        assert journal is not None
        if not self._opened:
            journal.open()
            self._opened = True
        return journal

    async def promise(self, calls: list[TaskCall]) -> None:
        """Write the records of *calls* that run if the response completes; return once on disk."""
        promised = [call for call in calls if call.when != "failure" and call.written is None]
        if promised:
            for call in promised:
                call.written = True
            await self.ensure_open().add(
                [_record(call) for call in promised], self.owner, time.time() + self.lease
            )

    def write_later(self, calls: Collection[TaskCall]) -> None:
        """Queue the records of *calls*, not promised to a client; their first attempt waits."""
        calls = [call for call in calls if call.written is None]
        if calls:
            written = self.ensure_open().add(
                [_record(call) for call in calls], self.owner, time.time() + self.lease
            )
            for call in calls:
                call.written = written

    def forget(self, calls: Collection[TaskCall]) -> None:
        """Remove the records of *calls* that were written but will not run."""
        ids = [call.id for call in calls if call.written is not None]
        if ids and self.journal is not None:
            self.journal.forget(ids)

    # Running

    async def attempt(self, call: TaskCall) -> None:
        """Run one attempt of *call* in a context of its own, and record how it ended."""
        written = call.written
        if isinstance(written, asyncio.Future):
            call.written = True
            try:
                await written
            except Exception:  # Logged by the journal: run it anyway, in memory.
                pass
        task = call.task
        context = Context()
        run_as(CurrentJob(call.id, call.name, call.attempt + 1), context)
        try:
            await in_context(context, self._run(task, call.arguments))
        except asyncio.CancelledError:
            if not self._runner_of().closed:  # Its timeout, not the shutdown.
                self._failed(call, TimeoutError("the attempt ran past its task timeout"))
            raise
        except BaseException as error:
            if self._failed(call, error):
                raise Retrying(f"attempt {call.attempt} of {call.name} failed") from error
            raise
        if self.journal is not None:
            self.journal.finished(call.id)

    async def _run(self, task: Task[..., Any], arguments: str) -> None:
        # Decoded from what the journal keeps, even the first time: a task sees what
        # it would see on replay.
        args, kwargs = task.decode(arguments)
        async with self.app.app_context():
            if task.is_async:
                await task.func(*args, **kwargs)
            else:
                call = functools.partial(copy_context().run, task.func, *args, **kwargs)
                await self._runner_of().call_on_thread(call)

    def _failed(self, call: TaskCall, error: BaseException) -> bool:
        """Record a failed attempt; return whether another is scheduled."""
        call.attempt += 1
        task = call.task
        text = f"{type(error).__name__}: {error}"[:_ERROR_TEXT]
        config = self._config_of()
        if not task.gives_up(call.attempt, time.time() - call.created, config):
            delay = _backoff(task, call.attempt)
            if self.journal is not None:
                self.journal.retrying(call.id, call.attempt, time.time() + delay, text)
            self._retry_in(delay, call)
            logger.warning(
                "Attempt %d of task %s (job %s, for %s) failed (%s); retrying in %.1fs.",
                call.attempt,
                call.name,
                call.id,
                call.origin,
                text,
                delay,
                extra=log_fields(call.name, None),
            )
            return True
        if self.journal is not None:
            self.journal.dead(call.id, call.attempt, text)
        try:
            args, kwargs = task.decode(call.arguments)
            shown = show_arguments(args, kwargs, log_arguments(config))
        except Exception as failure:  # A serializer that cannot read its own text.
            shown = f"<arguments unreadable: {type(failure).__name__}>"
        logger.error(
            "Task %s (job %s, for %s) failed its last attempt (%s) and is %s: %s. %s.%s",
            call.name,
            call.id,
            call.origin,
            task.limit(call.attempt, config),
            "kept in the journal as dead" if self.journal is not None else "given up on",
            text,
            shown,
            f" Retry it with: quart deferred retry {call.id}" if self.journal is not None else "",
            extra=log_fields(call.name, None),
        )
        return False

    def _retry_in(self, delay: float, call: TaskCall) -> None:
        runner = self._runner_of()
        runner.hold()
        handle = runner.loop.call_later(delay, self._resubmit, call)
        self._retries[call.id] = (handle, call, runner)

    def _resubmit(self, call: TaskCall) -> None:
        _, _, runner = self._retries.pop(call.id)
        if not runner.closed:
            runner.submit(Batch([Job(call, (), NO_KWARGS, True)], Context(), None))
        runner.release()

    # The start and the end

    async def start(self) -> None:
        """Claim the records no live process holds, run them, and keep the lease renewed."""
        if self.journal is None:
            return
        self._lease = Lease(
            self.ensure_open(), self.owner, self.lease, self.tasks, self._take, self._config_of
        )
        await self._lease.start()

    def _take(self, record: Record, now: float) -> None:
        """Run *record*, claimed from the journal: now, or when its next attempt is due."""
        task = self.tasks[record.name]
        call = TaskCall(task, record.id, record.arguments, record.origin, record.created)
        call.runtime, call.written, call.attempt = self, True, record.attempt
        if record.not_before > now:
            self._retry_in(record.not_before - now, call)
        else:
            self._runner_of().submit(Batch([Job(call, (), NO_KWARGS, True)], Context(), None))

    async def close(self) -> None:
        """Let go of what has not finished, for the next process, and say what was kept."""
        if self._lease is not None:
            self._lease.stop()
            self._lease = None
        retries = [call for _, call, _ in self._retries.values()]
        for handle, _, runner in self._retries.values():
            handle.cancel()
            runner.release()
        self._retries.clear()
        if self.journal is None or not self._opened:
            if retries:
                logger.warning(
                    "Gave up on %d tasks waiting to retry at shutdown (no journal): %s.",
                    len(retries),
                    tally(call.name for call in retries),
                    extra=log_fields(None, None),
                )
            return
        if retries:
            logger.info(
                "Kept %d tasks waiting to retry in the journal %s for the next start: %s.",
                len(retries),
                self.journal.url,
                tally(call.name for call in retries),
                extra=log_fields(None, None),
            )
        try:
            await self.journal.release(self.owner)
        finally:
            self.journal.close()  # On the loop: "normal" writes there; "full" joins its thread.
            self._opened = False


def _record(call: TaskCall) -> Record:
    now = time.time()
    return Record(
        call.id, call.task.name, call.arguments, call.origin, call.created, now, call.attempt
    )


def _backoff(task: Task[..., Any], attempt: int) -> float:
    """Exponential, capped, with jitter: between half and all of ``retry_delay * 2**(n-1)``."""
    delay = min(task.retry_delay * 2.0 ** (attempt - 1), task.max_delay)
    return delay * (0.5 + random.random() / 2)  # Jitter, not secrets.
