"""Hand post-response work to a task queue: ``enqueue_after_response``.

The job is sent after the response has gone out, and only if the request
ended as ``when`` asks (``"success"`` by default), so a worker never picks up
a job before the request that made it is finished, and a failed request
leaves no job behind. The send itself is an ordinary post-response job: the
runner's limits, timeouts, ``join``, ``stats`` and shutdown drain apply.

Queues plug in through :class:`QueueAdapter`. Celery and taskiq are built in
and recognised without importing either library: a task can only be one of
theirs if its library has already been imported.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, NoReturn

import anyio

from ._compat import app_context, current_source
from ._config import (
    ArgumentRedactor,
    bounded_repr,
    log_arguments,
    seconds,
    show_arguments,
    whole_number,
)
from ._outbox import OUTBOX, remember
from .adapters import adapter_for, prepared, QueueAdapter
from .exceptions import (
    ContextError,
    EnqueueError,
    NotInitialisedError,
)
from .jobs import check_key, check_when, When
from .post_response import defer

BACKOFF = 0.1  # Seconds before the first retry; doubled for each one after.


def enqueue_after_response(
    task: object, /, *args: Any, when: When = "success", key: str | None = None, **kwargs: Any
) -> bool:
    """Send ``task(*args, **kwargs)`` to its task queue once the response has been sent.

    ::

        @app.post("/signup")
        async def signup() -> tuple[str, int]:
            user = await create_user()
            enqueue_after_response(send_welcome_mail, user.email)  # a Celery or taskiq task
            return "created", 201

    By default the job is sent only if the request succeeded (the final body
    was sent with a status below 400): a job for a failed request is the bug
    this exists to prevent. A failed send is retried
    ``QUART_DEFERRED_ENQUEUE_RETRIES`` times with backoff, then logged at
    ERROR with the task's name and arguments and counted as failed. With a
    journal (``QUART_DEFERRED_JOURNAL``) the send is kept there instead, before
    the response completes, and retried until the broker takes it, for up to
    ``QUART_DEFERRED_ENQUEUE_MAX_AGE`` (an hour), after restarts too; the
    broker gets the job's id as the message id (Celery's ``task_id``).

    Arguments:
        task: A Celery task, a taskiq task, or a task of a registered adapter.
        when: ``"success"`` (default), ``"always"`` or ``"failure"``.
        key: De-duplicate, as for ``after_this_response``.

    Returns:
        ``True`` if the send was scheduled; ``False`` if work with the same
        *key* was already waiting or running.
    """
    caller = "enqueue_after_response"
    when = check_when(when, caller)
    key = check_key(key, caller)
    app_ctx = app_context()
    if current_source() is None or app_ctx is None:
        msg = (
            "enqueue_after_response() was called outside a request or websocket, where "
            "there is no response to wait for. Send the task with its own API instead: "
            "task.delay(...) for Celery, await task.kiq(...) for taskiq."
        )
        raise ContextError(msg)
    state = app_ctx.app.extensions.get("quart_deferred")
    if state is None:
        raise NotInitialisedError.for_app(app_ctx.app.name)
    adapter = adapter_for(task, state.extension.queues)
    config = state.config
    args, kwargs = prepared(adapter, task, args, kwargs)
    if state.durable().journal is not None:  # Kept in the journal until the broker has it.
        name = adapter.task_name(task)
        remember(name, adapter, task)
        return defer(OUTBOX, (name, list(args), kwargs), {}, when, key, caller)
    send = _Send(
        adapter,
        task,
        args,
        kwargs,
        retries=whole_number(config, "QUART_DEFERRED_ENQUEUE_RETRIES", minimum=0),
        timeout=seconds(config, "QUART_DEFERRED_ENQUEUE_TIMEOUT"),
        show=log_arguments(config),
    )
    return defer(send, (), {}, when, key, caller)


class _Send:
    """One send of one task, with its retries, as one async job of the runner.

    Each attempt has a deadline (``QUART_DEFERRED_ENQUEUE_TIMEOUT``): a broker
    that accepts the connection and never answers must not hold a thread
    and the drain forever. An error that retrying cannot fix (the task
    refused its arguments) is not retried. The runner logs and traces it as
    ``enqueue(<task name>)``.
    """

    def __init__(
        self,
        adapter: QueueAdapter,
        task: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        retries: int,
        timeout: float,
        show: bool | ArgumentRedactor,
    ) -> None:
        self.adapter = adapter
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self.retries = retries
        self.timeout = timeout
        self.show = show
        self.on_thread = not inspect.iscoroutinefunction(adapter.send)
        self.__qualname__ = f"enqueue({adapter.task_name(task)})"
        self.__module__ = "quart_deferred"

    async def __call__(self) -> None:
        for attempt in range(self.retries + 1):
            try:
                with anyio.fail_after(self.timeout):
                    await self._attempt()
                return
            except Exception as error:
                if attempt == self.retries or _permanent(error):
                    self._give_up(attempt + 1, error)
                await asyncio.sleep(BACKOFF * 2**attempt)

    async def _attempt(self) -> None:
        if not self.on_thread:
            await self.adapter.send(self.task, self.args, self.kwargs)
            return
        app_ctx = app_context()
        assert app_ctx is not None  # A job runs in an app context.
        runner = app_ctx.app.extensions["quart_deferred"].runner()
        await runner.call_on_thread(self.adapter.send, self.task, self.args, self.kwargs)

    def _give_up(self, attempts: int, error: Exception) -> NoReturn:
        if isinstance(error, TimeoutError) and not str(error):
            error = TimeoutError(f"no answer within {self.timeout}s")
        msg = (
            f"Could not send task {self.adapter.task_name(self.task)} with "
            f"{show_arguments(self.args, self.kwargs, self.show)} after {attempts} "
            f"attempt{'s' if attempts > 1 else ''}: {bounded_repr(error)}. "
            + (
                "The error will not go away by retrying."
                if _permanent(error)
                else "Check the broker; to replay the job, send it again by hand."
            )
        )
        raise EnqueueError(msg) from error


def _permanent(error: BaseException) -> bool:
    """Whether retrying cannot help: the task or its serializer refused what it was given."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, TypeError | ValueError | AttributeError | LookupError) or type(
            seen
        ).__name__ in ("EncodeError", "SerializationError"):
            return True
        seen = seen.__cause__
    return False
