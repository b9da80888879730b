"""What an ended exchange's work becomes: ``when``, the app-wide hooks, the hand-over.

The exchange (_exchange.py) watches the response go out and, once the
exchange is over, reports how it ended to :func:`hand_over`: the one place
that applies each job's ``when`` (``"success"``: the response was complete
and its status below 400), adds the app-wide hooks with their
:class:`Delivery`, counts and logs skipped work, settles the journal's
records of tasks that will not run, and hands what runs to the runner.
"""

from __future__ import annotations

from contextvars import Context
from dataclasses import dataclass
import logging
from typing import Any, TYPE_CHECKING

from werkzeug.datastructures import Headers

from .jobs import Batch, describe, Hook, Job, log_fields, Waiter, When
from .tasks import TaskCall

if TYPE_CHECKING:
    from quart.wrappers import BaseRequestWebsocket

    from ._admission import Admission
    from .runner import TaskRunner

logger = logging.getLogger("quart_deferred")


@dataclass(frozen=True, slots=True)
class Delivery:
    """What went out for one exchange; given to ``@deferred.after_response`` hooks.

    Attributes:
        status_code: The status sent with ``http.response.start``, or ``None``
            if the exchange ended before a response started.
        complete: Whether the server accepted every byte the client was
            promised: body bytes reaching the content-length, or the final
            message of a response without one.
        raw_headers: The headers as sent, as ASGI byte pairs.
    """

    status_code: int | None
    complete: bool
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def headers(self) -> Headers:
        """Return a new ``Headers`` object decoded from what was sent."""
        return Headers(
            [(key.decode("latin1"), value.decode("latin1")) for key, value in self.raw_headers]
        )

    @property
    def successful(self) -> bool:
        """Whether ``when="success"`` work runs for this exchange."""
        return _successful(self.complete, self.status_code)


def _successful(complete: bool, status: int | None) -> bool:
    """The response was complete and its status below 400: what ``when="success"`` means."""
    return complete and status is not None and status < 400


def _matches(when: When, successful: bool) -> bool:
    """Whether work registered with *when* runs for an exchange that was (not) *successful*."""
    return when == "always" or (when == "success") is successful


def hand_over(
    runner: TaskRunner,
    batch: Batch | None,
    source: BaseRequestWebsocket | None,
    hooks: tuple[Hook, ...],
    complete: bool,
    start: dict[str, Any] | None,
    waiter: Waiter | None = None,
) -> None:
    """Hand an ended exchange's work to *runner*, as its ``when`` and the app's hooks decide.

    The ASGI layer calls this once per exchange that has work or hooks, with
    what it saw: whether the response was *complete*, and its *start*
    message (status and headers), if one went out. This is the one place
    that applies ``when``, adds the app-wide hooks with their
    :class:`Delivery`, and counts and logs skipped work. A *waiter* (see
    _test_client.py) is settled when the work has ended, or now if none runs.
    """
    status: int | None = None if start is None else start["status"]
    successful = _successful(complete, status)
    admission = runner.admission
    jobs: list[Job]
    if batch is None:  # App-wide hooks for a request that never reached Quart's hooks.
        jobs = []
        batch = Batch(jobs, Context(), source, fresh_app_context=True)
    else:
        jobs = batch.jobs
        admission.handed_over(len(jobs))  # Now waiting, or skipped below.
    batch.status = status  # For tracing, and for the line that logs a skipped job.
    for job in jobs:
        if job.when != "always":  # Only then is there anything to filter out.
            jobs = batch.jobs = [
                job for job in jobs if _runs(admission, job, complete, successful, batch)
            ]
            break
    if batch.calls is not None:
        _journal(batch.calls, jobs)
        batch.calls = None
    if hooks:
        headers = () if start is None else tuple(start.get("headers", ()))
        delivery = Delivery(status, complete, headers)
        jobs.extend(hook.job_for(delivery) for hook in hooks if _matches(hook.when, successful))
    if not jobs:
        if waiter is not None:
            waiter.settle()
        return
    batch.waiter = waiter
    runner.submit(batch)


def _journal(calls: list[TaskCall], jobs: list[Job]) -> None:
    """Forget the journaled tasks that will not run; queue the records of those that will."""
    running = {id(job.func) for job in jobs}
    runtime = calls[0].runtime
    runtime.forget([call for call in calls if id(call) not in running])
    runtime.write_later([call for call in calls if id(call) in running])


def _runs(admission: Admission, job: Job, complete: bool, successful: bool, batch: Batch) -> bool:
    """Whether *job* runs for how the exchange ended; a job that does not is skipped."""
    if _matches(job.when, successful):
        return True
    admission.skip(job)
    name = job.name
    logger.debug(
        "Skipped %s for %s: when=%r and the exchange ended with status %s (%s).",
        name,
        describe(batch.source),
        job.when,
        batch.status,
        "complete" if complete else "incomplete",
        extra=log_fields(name, batch.source),
    )
    return False
