"""Queue adapters: how ``enqueue_after_response`` recognises, finds and sends a queue's tasks.

Celery and taskiq are built in and recognised without importing either
library: a task can only be one of theirs if its library has already been
imported. Other queues plug in through :class:`QueueAdapter`.
"""

from __future__ import annotations

from collections.abc import Iterable
import inspect
import sys
from typing import Any, Protocol, runtime_checkable

from ._config import bounded_repr
from .exceptions import InvalidArgumentError, InvalidCallbackError


@runtime_checkable
class QueueAdapter(Protocol):
    """How to recognise one queue library's tasks and send them.

    ``send`` may be ``async def`` (awaited on the event loop) or a plain
    function (run on the runner's threads: use that for blocking clients).
    Register an adapter with ``QuartDeferred(app, queues=[...])`` or
    ``deferred.add_queue(adapter)``.
    """

    def accepts(self, task: object) -> bool:
        """Whether *task* is one of this queue's tasks."""
        ...

    def task_name(self, task: Any) -> str:
        """The name to log and trace the send under."""
        ...

    def send(self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Send ``task(*args, **kwargs)`` to the queue; raise if the broker refused it."""
        ...


# An adapter may also have:
# - prepare(task, args, kwargs) -> (args, kwargs): called at the enqueue_after_response()
#   call, it encodes the arguments as the queue will, raises if they cannot be, and
#   returns what the send should pass (see CeleryAdapter);
# - find(name) -> task or None: the task registered under *name* in this process, so that
#   a send kept in the journal can be made by another process after a restart;
# - a `task_id` keyword argument to send(): the journaled job's id, given to the broker as
#   the message's id on every attempt, so that a consumer can recognise a re-send.


class CeleryAdapter:
    """Celery tasks, sent with ``apply_async``, which blocks on broker I/O: run on a thread."""

    def accepts(self, task: object) -> bool:
        celery = sys.modules.get("celery")
        return celery is not None and isinstance(task, celery.Task)

    def task_name(self, task: Any) -> str:
        return str(task.name)

    def prepare(
        self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Encode the arguments with the task's serializer now, and send what decodes."""
        from kombu import serialization

        codec: Any = serialization  # kombu is untyped.
        serializer = task.serializer or task.app.conf.task_serializer
        content_type, encoding, data = codec.dumps([list(args), kwargs], serializer=serializer)
        decoded_args, decoded_kwargs = codec.loads(data, content_type, encoding)
        return tuple(decoded_args), decoded_kwargs

    def find(self, name: str) -> Any:
        celery = sys.modules.get("celery")
        return None if celery is None else celery.current_app.tasks.get(name)

    def send(
        self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], task_id: str | None = None
    ) -> None:
        if task_id is None:
            task.apply_async(args=args, kwargs=kwargs)
        else:  # A kept send: we retry it, so kombu's own retries would only outlast the timeout.
            task.apply_async(args=args, kwargs=kwargs, task_id=task_id, retry=False)


class TaskiqAdapter:
    """taskiq tasks, sent with ``await task.kiq(...)``."""

    def accepts(self, task: object) -> bool:
        taskiq = sys.modules.get("taskiq")
        return taskiq is not None and isinstance(task, taskiq.AsyncTaskiqDecoratedTask)

    def task_name(self, task: Any) -> str:
        return str(task.task_name)

    def prepare(
        self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Build and format the message as ``kiq`` would, and send what it decodes to."""
        formatter = task.broker.formatter
        message = task.kicker()._prepare_message(*args, **kwargs)
        decoded = formatter.loads(formatter.dumps(message).message)
        return tuple(decoded.args), dict(decoded.kwargs)

    def find(self, name: str) -> Any:
        taskiq = sys.modules.get("taskiq")
        return None if taskiq is None else taskiq.AsyncBroker.global_task_registry.get(name)

    async def send(
        self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], task_id: str | None = None
    ) -> None:
        await task.kicker().with_task_id(task_id).kiq(*args, **kwargs)


BUILT_IN_ADAPTERS: tuple[QueueAdapter, ...] = (CeleryAdapter(), TaskiqAdapter())


def prepared(
    adapter: QueueAdapter, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Encode the arguments at the call, where a mistake can still be fixed, not after the 201.

    What is sent is what decoded, so a view that changes an argument after
    the call does not change what the worker gets.
    """
    prepare = getattr(adapter, "prepare", None)
    if prepare is None:
        return args, kwargs
    try:
        prepared: tuple[tuple[Any, ...], dict[str, Any]] = prepare(task, args, kwargs)
    except Exception as error:
        msg = (
            f"enqueue_after_response() cannot send {adapter.task_name(task)}: its arguments "
            f"do not encode for the queue ({bounded_repr(error)}). Pass plain values (str, "
            "int, float, bool, None, and lists and dicts of them), such as the user's id "
            "rather than the user object."
        )
        raise InvalidArgumentError(msg) from error
    return prepared


def adapter_for(task: object, extra: Iterable[QueueAdapter]) -> QueueAdapter:
    extra = tuple(extra)
    for adapter in (*extra, *BUILT_IN_ADAPTERS):
        if adapter.accepts(task):
            return adapter
    names = ", ".join(type(adapter).__name__ for adapter in extra)
    msg = (
        f"enqueue_after_response() does not know how to send {task!r} of type "
        f"{type(task).__name__}. It takes a Celery task (@celery_app.task), a taskiq "
        "task (@broker.task)"
        + (f", or a task of the registered adapters {names}" if names else "")
        + ". For another queue, register a QueueAdapter (see the README); for a plain "
        "function, use after_this_response()."
    )
    raise InvalidCallbackError(msg)


def find(name: str, extra: Iterable[QueueAdapter]) -> tuple[QueueAdapter, Any] | None:
    """The adapter and task registered under *name* in this process, if any is."""
    for adapter in (*extra, *BUILT_IN_ADAPTERS):
        finder = getattr(adapter, "find", None)
        task = None if finder is None else finder(name)
        if task is not None and adapter.accepts(task):
            return adapter, task
    return None


def takes_task_id(adapter: QueueAdapter) -> bool:
    """Whether the adapter's ``send`` takes the job's id as ``task_id``."""
    try:
        return "task_id" in inspect.signature(adapter.send).parameters
    except (TypeError, ValueError):
        return False
