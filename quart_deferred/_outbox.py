"""The outbox: ``enqueue_after_response`` sends kept in the journal until the broker has them.

With a journal, a send is a task of its own (``quart_deferred.enqueue``):
written before the response completes, as any task, and retried with
backoff until the broker takes it or ``QUART_DEFERRED_ENQUEUE_MAX_AGE``
has passed, so a broker outage of minutes loses nothing. Each attempt gives
the broker the job's id as the message's id (Celery's ``task_id``, taskiq's
task id), so a consumer can recognise a re-send. After a restart, another
process finds the queue's task again by its name (Celery's app registry,
taskiq's, or an adapter's ``find``).
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
import inspect
import json
from typing import Any

import anyio
from quart import current_app

from ._config import seconds
from .adapters import find, QueueAdapter, takes_task_id
from .tasks import current_job, JSON, Task

NAME = "quart_deferred.enqueue"

# The queue tasks sent from this process, by name: found here first, so that an
# adapter without find() still works within one process.
_sent: dict[str, tuple[QueueAdapter, Any]] = {}


def remember(name: str, adapter: QueueAdapter, task: Any) -> None:
    _sent[name] = (adapter, task)


async def send_kept(name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """One attempt at a kept send: the queue's task *name*, with the job's id as its id."""
    state = current_app.extensions["quart_deferred"]
    found = _sent.get(name) or find(name, state.extension.queues)
    if found is None:
        msg = (
            f"No task named {name} is known to this process's task queues: import the module "
            "that defines it (with @celery_app.task or @broker.task) in the app."
        )
        raise LookupError(msg)
    adapter, task = found
    extra = {"task_id": current_job().id} if takes_task_id(adapter) else {}
    send = functools.partial(adapter.send, task, tuple(args), kwargs, **extra)
    with anyio.fail_after(seconds(state.config, "QUART_DEFERRED_ENQUEUE_TIMEOUT")):
        if inspect.iscoroutinefunction(adapter.send):
            await send()
        else:
            await state.runner().call_on_thread(send)


class Outbox(Task[..., Any]):
    """The task of kept sends: retried by age, not by count; named for the queue's task."""

    def label(self, arguments: str) -> str:
        try:
            return f"enqueue({json.loads(arguments)[0][0]})"
        except (ValueError, LookupError, TypeError):
            return "enqueue(?)"

    def gives_up(self, attempts: int, age: float, config: Mapping[str, Any]) -> bool:
        return age >= seconds(config, "QUART_DEFERRED_ENQUEUE_MAX_AGE")

    def limit(self, attempts: int, config: Mapping[str, Any]) -> str:
        age = config["QUART_DEFERRED_ENQUEUE_MAX_AGE"]
        return f"{attempts} attempts, past QUART_DEFERRED_ENQUEUE_MAX_AGE={age}s"


OUTBOX = Outbox(send_kept, NAME, 0, 0.1, 10.0, JSON)
