"""Post-response work: ``after_this_response``, and what an ended exchange's work is.

A request registers jobs with :func:`after_this_response` (and
``enqueue_after_response``, through :func:`defer`) on the exchange that the
ASGI layer (_asgi.py, _exchange.py) keeps in its scope. The exchange watches the response
go out and, once the exchange is over, reports how it ended to
:func:`hand_over`, which applies each job's ``when`` (``"success"``: the
response was complete and its status below 400), adds the app-wide hooks
with their :class:`Delivery`, and hands what runs to the runner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import Context, copy_context
from dataclasses import dataclass
import logging
from typing import Any, Concatenate, overload, ParamSpec, TYPE_CHECKING, TypeVar

from werkzeug.datastructures import Headers

from ._compat import current_source
from ._request import cannot_add_work, exchange_of, WorkRecord
from .exceptions import ContextError
from .jobs import (
    Batch,
    check_key,
    check_when,
    describe,
    Hook,
    is_async,
    Job,
    log_fields,
    NO_KWARGS,
    When,
)
from .tasks import Task, TaskCall

if TYPE_CHECKING:
    from quart.wrappers import BaseRequestWebsocket

    from .app_state import AppState
    from .runner import TaskRunner

P = ParamSpec("P")
R = TypeVar("R")
A1 = TypeVar("A1")
A2 = TypeVar("A2")
A3 = TypeVar("A3")
A4 = TypeVar("A4")
F = TypeVar("F", bound=Callable[[], Any])
_MISSING: Any = object()  # No function given: the decorator form.

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
    app_state: AppState,
    runner: TaskRunner,
    batch: Batch | None,
    source: BaseRequestWebsocket | None,
    hooks: tuple[Hook, ...],
    complete: bool,
    start: dict[str, Any] | None,
    *,
    track: bool = False,
) -> asyncio.Future[list[BaseException]] | None:
    """Hand an ended exchange's work to *runner*, as its ``when`` and the app's hooks decide.

    The ASGI layer calls this once per exchange that has work or hooks, with
    what it saw: whether the response was *complete*, and its *start*
    message (status and headers), if one went out. This is the one place
    that applies ``when``, adds the app-wide hooks with their
    :class:`Delivery`, and counts and logs skipped work. With *track* (the
    test client), it returns a future that settles when the work has ended,
    for ``deferred.wait_for(response)``.
    """
    status: int | None = None if start is None else start["status"]
    successful = _successful(complete, status)
    jobs: list[Job]
    if batch is None:  # App-wide hooks for a request that never reached Quart's hooks.
        jobs = []
        batch = Batch(jobs, Context(), source, fresh_app_context=True)
    else:
        jobs = batch.jobs
        app_state.handed_over(len(jobs))  # Now waiting, or skipped below.
    batch.status = status  # For tracing, and for the line that logs a skipped job.
    for job in jobs:
        if job.when != "always":  # Only then is there anything to filter out.
            jobs = batch.jobs = [
                job for job in jobs if _runs(app_state, job, complete, successful, batch)
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
        return None
    done = None
    if track:
        done = batch.done = runner.loop.create_future()
        batch.errors = []
    runner.submit(batch)
    return done


def _journal(calls: list[TaskCall], jobs: list[Job]) -> None:
    """Forget the journaled tasks that will not run; queue the records of those that will."""
    running = {id(job.func) for job in jobs}
    runtime = calls[0].runtime
    runtime.forget([call for call in calls if id(call) not in running])
    runtime.write_later([call for call in calls if id(call) in running])


def _runs(app_state: AppState, job: Job, complete: bool, successful: bool, batch: Batch) -> bool:
    """Whether *job* runs for how the exchange ended; a job that does not is skipped."""
    if _matches(job.when, successful):
        return True
    app_state.skip(job)
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


# The call forms with `when=` or `key=`. PEP 612 cannot type keyword-only
# parameters beside a ParamSpec's *args and **kwargs, so these check up to
# four positional arguments against the function's first parameters
# (Concatenate[..., ...]), and leave its keyword arguments unchecked. Without
# `when=` and `key=`, the last overload checks every argument.
@overload
def after_this_response(*, when: When = "always", key: str | None = None) -> Callable[[F], F]: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # `key` is reserved, as `when` is.
    func: Callable[..., Any], /, *, key: str, when: When = "always", **kwargs: Any
) -> bool: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # `key` is reserved, as `when` is.
    func: Callable[Concatenate[A1, ...], Any],
    a1: A1,
    /,
    *,
    key: str,
    when: When = "always",
    **kwargs: Any,
) -> bool: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # `key` is reserved, as `when` is.
    func: Callable[Concatenate[A1, A2, ...], Any],
    a1: A1,
    a2: A2,
    /,
    *,
    key: str,
    when: When = "always",
    **kwargs: Any,
) -> bool: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # `key` is reserved, as `when` is.
    func: Callable[Concatenate[A1, A2, A3, ...], Any],
    a1: A1,
    a2: A2,
    a3: A3,
    /,
    *,
    key: str,
    when: When = "always",
    **kwargs: Any,
) -> bool: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # `key` is reserved, as `when` is.
    func: Callable[Concatenate[A1, A2, A3, A4, ...], Any],
    a1: A1,
    a2: A2,
    a3: A3,
    a4: A4,
    /,
    *,
    key: str,
    when: When = "always",
    **kwargs: Any,
) -> bool: ...
@overload
def after_this_response(  # type: ignore[overload-overlap]  # Five positional arguments or more: not checked.
    func: Callable[..., Any],
    a1: Any,
    a2: Any,
    a3: Any,
    a4: Any,
    a5: Any,
    /,
    *args: Any,
    key: str,
    when: When = "always",
    **kwargs: Any,
) -> bool: ...
@overload
def after_this_response(
    func: Callable[..., R], /, *, when: When, **kwargs: Any
) -> Callable[..., R]: ...
@overload
def after_this_response(
    func: Callable[Concatenate[A1, ...], R], a1: A1, /, *, when: When, **kwargs: Any
) -> Callable[..., R]: ...
@overload
def after_this_response(
    func: Callable[Concatenate[A1, A2, ...], R],
    a1: A1,
    a2: A2,
    /,
    *,
    when: When,
    **kwargs: Any,
) -> Callable[..., R]: ...
@overload
def after_this_response(
    func: Callable[Concatenate[A1, A2, A3, ...], R],
    a1: A1,
    a2: A2,
    a3: A3,
    /,
    *,
    when: When,
    **kwargs: Any,
) -> Callable[..., R]: ...
@overload
def after_this_response(
    func: Callable[Concatenate[A1, A2, A3, A4, ...], R],
    a1: A1,
    a2: A2,
    a3: A3,
    a4: A4,
    /,
    *,
    when: When,
    **kwargs: Any,
) -> Callable[..., R]: ...
@overload
def after_this_response(  # Five positional arguments or more: not checked.
    func: Callable[..., R],
    a1: Any,
    a2: Any,
    a3: Any,
    a4: Any,
    a5: Any,
    /,
    *args: Any,
    when: When,
    **kwargs: Any,
) -> Callable[..., R]: ...
@overload
def after_this_response(
    func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
) -> Callable[P, R]: ...
def after_this_response(func: Any = _MISSING, /, *args: Any, **kwargs: Any) -> Any:
    """Run ``func(*args, **kwargs)`` after the response has been sent to the client.

    Use it for slow work the client should not wait for: the welcome e-mail,
    the audit row. It runs on a task the runner owns, once the response is
    complete, in a copy of the request's context, so ``request``,
    ``g``, ``session`` and ``current_app`` still work. The request's teardown
    functions have already run by then, so anything they close (a database
    connection on ``g``) is closed. Plain functions run on a thread::

        @app.post("/signup")
        async def signup() -> tuple[str, int]:
            user = await create_user()
            after_this_response(send_welcome_mail, user.email)
            return "created", 201

        @after_this_response(when="failure")
        async def audit_failure() -> None: ...

    Arguments:
        func: The function to call; ``async def`` functions are awaited.
        when: ``"always"`` (default), ``"success"`` (the response was complete
            and its status is below 400) or ``"failure"`` (anything else).
        key: De-duplicate: if work with this key is already waiting or
            running in this process, this call adds nothing. With a key the
            call returns ``True`` if it scheduled the work, ``False`` if not.
    """
    when: When = "always"
    key = None
    if kwargs:  # Checked only when given: this is on every registration's path.
        when = check_when(kwargs.pop("when", "always"), "after_this_response")
        key = check_key(kwargs.pop("key", None), "after_this_response")
    if func is _MISSING:

        def decorator(decorated: F) -> F:
            defer(decorated, (), {}, when, key)
            return decorated

        return decorator
    scheduled = defer(func, args, kwargs, when, key)
    return func if key is None else scheduled


def defer(
    func: object,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    when: When,
    key: str | None,
    caller: str = "after_this_response",
) -> bool:
    task = func if isinstance(func, Task) else None
    job = None
    if task is None:
        job = Job(func, args, kwargs or NO_KWARGS, is_async(func, caller), when, key)  # type: ignore[arg-type]
    source = current_source()
    if source is None:
        msg = (
            "after_this_response() was called outside a request or websocket, where "
            "there is no response to wait for. Call it from a view or a request hook; "
            "to start work from elsewhere, use deferred.start_soon(func, ...)."
        )
        raise ContextError(msg)
    exchange: WorkRecord | None = exchange_of(source)
    if exchange is None or exchange.finished:
        raise cannot_add_work(source, exchange is not None, caller)
    exchange.source = source
    app_state = exchange.app_state
    if task is not None:  # Its arguments are encoded now: an error here, not a lost job later.
        job = app_state.durable().job_for(task, args, kwargs, when, key, caller, describe(source))
    assert job is not None
    if not app_state.accept(func, caller, key):
        return False
    batch = exchange.batch
    if batch is None:  # The request's first job: capture its context now.
        batch = exchange.batch = Batch([job], copy_context(), source)
    else:
        batch.jobs.append(job)
    if task is not None and app_state.durable().journal is not None:
        if batch.calls is None:
            batch.calls = []
        batch.calls.append(job.func)
    return True
