"""Deferred request callbacks and supervised post-response work for Quart.

Where each concept lives (no import cycles among them, not even type-only ones):

- ``extension``: ``QuartDeferred``, the public API: binding to apps, init arguments, hooks,
  tasks, ``start_soon``, ``join``, ``stats``; each call checked here, then done by its app's state.
- ``app_state``: what one app keeps and does: config, counters and keys (written by runners
  only), the runner of each loop, the durable runtime, ``start_soon``, ``stats``, ``join``.
- ``callbacks``: ``after_this_request`` and the dispatcher that calls its callbacks.
- ``post_response``: ``after_this_response``, and ``defer``: how a request registers a job.
- ``_hand_over``: ``Delivery`` and ``hand_over``, the one place that applies ``when`` and
  the app-wide hooks once an exchange has ended, and hands the work to the runner.
- ``_asgi``: the middleware: an exchange per request or connection, the drain at shutdown.
- ``_exchange``: the HTTP and websocket exchanges, which watch the messages and report once.
- ``_request``: a request's record (the exchange in its scope, or ``g``) and how to find it.
- ``tasks``: ``@deferred.task`` (``Task``), ``current_job()``, argument encoding.
- ``_durable``: how tasks run: attempts, retries with backoff, records written before the
  final send, what is kept at shutdown.
- ``_lease``: this process's hold on the journal: the claim of jobs no live process holds
  (at the start and every third of the lease), the lease's renewal, expiry of old records.
- ``_cli``: ``quart deferred list|retry|purge``, for operators.
- ``_journal``: the storage protocol (``Journal``, ``Record``); ``_sqlite_journal``: the
  SQLite store (schema, operations, WAL); ``_sqlite_admin``: its operator's side (the CLI's
  reads and changes, ``stats()``'s counts) on connections of their own; ``_group_commit``:
  its writes, committed in groups on the event loop (``QUART_DEFERRED_JOURNAL_SYNC="normal"``)
  or on a thread (``"full"``).
- ``adapters``: ``QueueAdapter`` and the Celery and taskiq adapters (recognise, find, send).
- ``_outbox``: with a journal, ``enqueue_after_response`` sends kept until the broker has them.
- ``queues``: ``enqueue_after_response``: in memory, a send with its retries (``_Send``).
- ``jobs``: ``Job``, ``Batch``, ``Hook``, the async check and the names used in log lines.
- ``runner``: ``TaskRunner``: a task per batch, ``MAX_CONCURRENCY``, ``join``'s idle wait; the
  one owner of what counts or limits jobs, through its ``Admission`` and ``Ledger``.
- ``_batch_run``: one batch's jobs, one after another on its task: timeouts, tracing, the
  slice between jobs, each job's outcome accounted for once.
- ``_admission``: ``Admission``: ``MAX_PENDING``, de-duplication keys, jobs held by requests.
- ``_drain``: the end of a runner's work: the drain at shutdown, or the loss of what a loop
  that ended left behind, each job accounted for by name.
- ``_outcomes``: the runner's ``Ledger``: how each job ended, counted and logged once.
- ``_stepping``: how the runner steps an async job (timing, its own cancellations, the
  timeout's cancel and let-go), and
  ``in_context`` (a coroutine stepped in a context of its own: a task's attempt).
- ``threads``: the runner's threads for plain ``def`` jobs.
- ``metrics``: ``Counters``, ``Keys`` (written by the runner only), ``Stats``, latencies
  and the Prometheus page.
- ``tracing``: OpenTelemetry spans per job.
- ``exceptions``, ``_config`` (config values checked on every read), ``_compat`` (Quart
  versions, and the only use of Quart's private names).
- ``pytest_plugin`` (strict mode) and ``_test_client`` (all of ``wait_for``'s bookkeeping: the
  test client's exchange, which marks its response, and the waiter its work settles).
"""

from ._hand_over import Delivery
from .adapters import QueueAdapter
from .callbacks import after_this_request
from .exceptions import (
    ContextError,
    DeferredError,
    EnqueueError,
    InvalidArgumentError,
    InvalidCallbackError,
    InvalidOptionError,
    NotInitialisedError,
    OverloadedError,
)
from .extension import QuartDeferred
from .metrics import JournalCounts, Latency, PROMETHEUS_CONTENT_TYPE, render_prometheus, Stats
from .post_response import after_this_response
from .queues import enqueue_after_response
from .tasks import current_job, CurrentJob, Task

__version__ = "0.1.0"  # Also in pyproject.toml; a test checks that the two agree.

__all__ = [
    "ContextError",
    "CurrentJob",
    "DeferredError",
    "Delivery",
    "EnqueueError",
    "InvalidArgumentError",
    "InvalidCallbackError",
    "InvalidOptionError",
    "JournalCounts",
    "Latency",
    "NotInitialisedError",
    "OverloadedError",
    "PROMETHEUS_CONTENT_TYPE",
    "QuartDeferred",
    "QueueAdapter",
    "Stats",
    "Task",
    "after_this_request",
    "after_this_response",
    "current_job",
    "enqueue_after_response",
    "render_prometheus",
]
