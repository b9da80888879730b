"""Post-response work: ``after_this_response``, and how a request registers its jobs.

A request registers jobs with :func:`after_this_response` (and
``enqueue_after_response``, through :func:`defer`) on the exchange that the
ASGI layer (_asgi.py, _exchange.py) keeps in its scope. What becomes of them
once the exchange is over (their ``when``, the app-wide hooks) is decided in
_hand_over.py.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import copy_context
from typing import Any, Concatenate, overload, ParamSpec, TypeVar

from ._compat import current_source
from ._request import cannot_add_work, exchange_of, WorkRecord
from .exceptions import ContextError
from .jobs import Batch, check_key, check_when, describe, is_async, Job, NO_KWARGS, When
from .tasks import Task

P = ParamSpec("P")
R = TypeVar("R")
A1 = TypeVar("A1")
A2 = TypeVar("A2")
A3 = TypeVar("A3")
A4 = TypeVar("A4")
F = TypeVar("F", bound=Callable[[], Any])
_MISSING: Any = object()  # No function given: the decorator form.


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
    if not exchange.runner.admission.accept(func, caller, key):
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
