"""Plain functions on threads: run one, and know afterwards what became of it.

A thread cannot be cancelled. When the runner stops waiting for a plain
function (its timeout, or shutdown), it must say what is true: the function
never started (and now never will), is still running on its thread, or had
just finished. :class:`ThreadCall` records that under a lock.

The threads are daemon threads of a pool of our own, not a
``ThreadPoolExecutor``: the interpreter joins an executor's threads at exit,
so one plain job blocked forever would keep the process from ever exiting.
A job still running when the process exits was already logged by name at
the drain; the process exits on time all the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import copy_context
import logging
from queue import SimpleQueue
import threading
from typing import Any, TYPE_CHECKING

from ._stepping import Carried
from .exceptions import InvalidCallbackError
from .jobs import describe, Job, log_fields

if TYPE_CHECKING:
    from quart.wrappers import BaseRequestWebsocket

    from .metrics import Keys

logger = logging.getLogger("quart_deferred")


class ThreadCall:
    """Run a sync job on a thread and know, later, whether it ever started or ended.

    The key of a keyed job is freed when the function really ends, on its
    thread, so that a second copy cannot start while the first still runs.
    """

    NEVER_STARTED, RUNNING, DONE = range(3)
    __slots__ = ("abandoned", "error", "job", "keys", "lock", "source", "state")

    def __init__(self, job: Job, source: BaseRequestWebsocket | None, keys: Keys) -> None:
        self.job = job
        self.source = source
        self.keys = keys
        self.lock = threading.Lock()
        self.state = self.NEVER_STARTED
        self.abandoned = False
        self.error: BaseException | None = None

    def __call__(self) -> None:
        with self.lock:
            if self.abandoned:  # Given up on before a thread picked it up: don't run.
                self._release_key()
                return
            self.state = self.RUNNING
        job = self.job
        try:
            result: Any = job.func(*job.args, **job.kwargs)
            if hasattr(result, "__await__"):
                if hasattr(result, "close"):
                    result.close()
                msg = (
                    f"The plain function {job.name} returned an awaitable, which would "
                    "never be awaited. Make it an async def function, or pass the async "
                    "function itself."
                )
                raise InvalidCallbackError(msg)
        except BaseException as error:  # SystemExit too: it must not end the thread silently.
            self.error = error
            raise
        finally:
            with self.lock:
                self.state = self.DONE
                late = self.abandoned
            self._release_key()
            if late:
                fields = log_fields(job.name, self.source)
                logger.info(
                    "%s for %s finished on its thread after it had been given up on.",
                    job.name,
                    describe(self.source),
                    extra=fields,
                )

    def _release_key(self) -> None:
        if self.job.key is not None:
            self.keys.release(self.job.key)  # Safe from a thread: see Keys.

    def abandon(self) -> int:
        """Stop waiting for the call and return its state: it never will start, is
        still running on its thread, or is already done."""
        with self.lock:
            self.abandoned = True
            return self.state


class ThreadPool:
    """At most *size* daemon threads, started as work needs them, taking calls in FIFO order."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._calls: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._quiet = threading.Condition(self._lock)  # Notified as each call ends.
        self._running = 0
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._backlog = 0  # Calls submitted that no thread has taken yet.

    def run(self, loop: asyncio.AbstractEventLoop, call: ThreadCall) -> asyncio.Future[None]:
        """Run *call* on a thread, in a copy of the current context; a future of its end."""
        future: asyncio.Future[None] = loop.create_future()
        context = copy_context()

        def on_thread() -> None:
            error: BaseException | None = None
            try:
                context.run(call)
            except Exception as raised:
                error = raised
            except BaseException as raised:  # Never as itself: see Carried.
                error = Carried.of(raised)
            try:
                loop.call_soon_threadsafe(_settle, future, error)
            except RuntimeError:  # The loop has closed: nobody is waiting any more.
                pass

        self._calls.put(on_thread)
        with self._lock:
            self._backlog += 1
            if self._backlog > self._idle and len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._serve, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            call = self._calls.get()
            with self._lock:
                self._idle -= 1
                self._backlog -= 1
                if call is not None:
                    self._running += 1
            if call is None:
                return
            try:
                call()
            finally:
                del call  # Keep nothing of the request (its context) while idle.
                with self._lock:
                    self._running -= 1
                    self._quiet.notify_all()

    def wait_running(self, timeout: float) -> int:
        """Wait up to *timeout* seconds for the calls running now; return how many still run."""
        with self._quiet:
            self._quiet.wait_for(lambda: self._running == 0, timeout)
            return self._running

    def close(self) -> None:
        """Let idle threads end; calls still queued were abandoned, and will not run."""
        for _ in self._threads:
            self._calls.put(None)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # Cancelled: the runner stopped waiting.
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
