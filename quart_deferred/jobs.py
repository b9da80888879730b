"""What one piece of deferred work is: a function, its arguments and how to call it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextvars import Context
from dataclasses import dataclass
import functools
import inspect
from inspect import CO_ASYNC_GENERATOR, CO_COROUTINE, CO_GENERATOR
from types import FunctionType
from typing import Any, get_args, Literal, Protocol, TYPE_CHECKING

from .exceptions import InvalidCallbackError, InvalidOptionError

if TYPE_CHECKING:
    from quart.wrappers import BaseRequestWebsocket

    from ._stepping import Watch

_GENERATOR_FLAGS = CO_GENERATOR | CO_ASYNC_GENERATOR

# The keyword arguments of every job that has none: one dict, never changed, rather
# than an empty one kept alive per waiting job.
NO_KWARGS: dict[str, Any] = {}

When = Literal["always", "success", "failure"]


@dataclass(frozen=True, slots=True)
class Hook:
    """An app-wide post-response function registered with ``@deferred.after_response``."""

    func: Callable[..., Any]
    is_async: bool
    takes_delivery: bool
    when: When

    @classmethod
    def of(cls, func: Callable[..., Any], when: When) -> Hook:
        """Check *func* for ``@deferred.after_response`` and make it a hook."""
        return cls(func, is_async(func, "after_response"), _takes_delivery(func), when)

    def job_for(self, delivery: object) -> Job:
        args = (delivery,) if self.takes_delivery else ()
        return Job(self.func, args, {}, self.is_async, self.when)


class NamedCall:
    """A callable that names itself in log lines: a durable task's call (tasks.TaskCall)."""

    __slots__ = ("name",)
    name: str


@dataclass(slots=True, eq=False)
class Job:
    """One deferred call: ``func(*args, **kwargs)``, run once ``when`` matches."""

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    is_async: bool
    when: When = "always"
    key: str | None = None  # De-duplication: one job per key waiting or running at a time.

    @property
    def name(self) -> str:
        return callable_name(self.func)


class Waiter(Protocol):
    """Someone waiting for a batch to end, and for its jobs' errors: ``deferred.wait_for()``.

    The runner's ledger adds each failure (timeouts as ``TimeoutError``) and the
    runner settles it once every job has ended, whichever way; see _test_client.py.
    """

    def add(self, error: BaseException) -> None: ...

    def settle(self) -> None: ...


class Batch:
    """The jobs of one request (or one ``start_soon`` call), run one after another.

    ``context`` is the request's captured ``contextvars.Context``; running the
    jobs in it gives them ``request``, ``g``, ``session`` and ``current_app``
    without pushing (and later tearing down) Quart contexts. Where there was
    no app context to capture, ``fresh_app_context`` has the runner push one.
    A request's batch is created with its first job, and filled until the
    exchange hands it to the runner.
    """

    __slots__ = (
        "calls",
        "context",
        "fresh_app_context",
        "handed_at",
        "jobs",
        "next",
        "source",
        "started",
        "status",
        "waiter",
        "watch",
    )

    def __init__(
        self,
        jobs: list[Job],
        context: Context,
        source: BaseRequestWebsocket | None,
        fresh_app_context: bool = False,
    ) -> None:
        self.jobs = jobs
        self.context = context
        self.source = source
        self.fresh_app_context = fresh_app_context
        self.calls: list[Any] | None = None  # Its journaled tasks' calls (tasks.TaskCall).
        self.next = 0  # The index of the next job to run.
        self.started = False  # Whether its task has begun to run it.
        self.handed_at = 0.0  # time.perf_counter() when the runner took it.
        self.status: int | None = None  # The response's status (tracing, logs); None if none.
        self.watch: Watch | None = None  # The running job's, while one runs.
        self.waiter: Waiter | None = None  # Only for wait_for(): see _test_client.py.

    @property
    def origin(self) -> str:
        """Describe where the work came from, for log lines: ``GET /signup``."""
        return describe(self.source)

    def log_fields(self, job: Job) -> dict[str, str | None]:
        return log_fields(job.name, self.source)


def log_fields(name: str | None, source: BaseRequestWebsocket | None) -> dict[str, str | None]:
    """The ``extra=`` of every log line: fields a formatter can use.

    Lines about the runner itself, not about one callback, carry them too,
    set to ``None``, so a format string naming them never fails.
    """
    if source is None:
        return {
            "deferred_callback": name,
            "deferred_request": None,
            "deferred_method": None,
            "deferred_path": None,
        }
    method = method_of(source)
    path = printable(source.path)
    return {
        "deferred_callback": name,
        "deferred_request": f"{method} {path}",
        "deferred_method": method,
        "deferred_path": path,
    }


def method_of(source: BaseRequestWebsocket) -> str:
    """The request's HTTP method, or ``WEBSOCKET`` for a websocket."""
    return printable(getattr(source, "method", "WEBSOCKET"))


def describe(source: BaseRequestWebsocket | None) -> str:
    """Describe a request for log lines and messages: ``GET /signup``."""
    if source is None:
        return "no request"
    return f"{method_of(source)} {printable(source.path)}"


def printable(text: str) -> str:
    """*text* with control characters escaped, so a request cannot forge or colour log lines.

    A path may hold anything a client percent-encoded: ``%0D%0A`` would start
    a new, forged log line and ``%1B[`` a terminal escape.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def check_when(when: object, caller: str) -> When:
    if when not in get_args(When):
        msg = (
            f"{caller}() got when={when!r}. Use one of 'always' (run however the "
            "exchange ended), 'success' (complete response, status below 400) or "
            "'failure' (everything else)."
        )
        raise InvalidOptionError(msg)
    return when  # type: ignore[return-value]  # One of get_args(When), checked above.


def check_key(key: object, caller: str) -> str | None:
    if key is None or (isinstance(key, str) and key):
        return key
    msg = (
        f"{caller}() got key={key!r}. A key must be a non-empty string naming the work, "
        "e.g. key=f'feed:{user_id}', or None for no de-duplication."
    )
    raise InvalidOptionError(msg)


def is_async(func: object, caller: str) -> bool:
    """Whether *func* is to be awaited; a clear error for what cannot be called later.

    On every registration's path: an ``async def`` function is told by its code
    flags alone, before anything else is looked at.
    """
    if type(func) is FunctionType:
        flags = func.__code__.co_flags
        if flags & CO_COROUTINE:
            return True
        if not flags & _GENERATOR_FLAGS:  # A plain `def`, unless marked as a coroutine function.
            return inspect.iscoroutinefunction(func)
    if inspect.iscoroutinefunction(func):
        return True
    if not callable(func):
        if inspect.iscoroutine(func):
            func.close()  # We will never await it; don't let Python warn about that.
            msg = (
                f"{caller}() got a coroutine object ({func.__qualname__}), which has "
                "already been called. Pass the function and its arguments instead: "
                f"{caller}(send_mail, address), not {caller}(send_mail(address))."
            )
        else:
            msg = (
                f"{caller}() expected a function to call later, got {_short(func)} of type "
                f"{type(func).__name__}. If you wrote {caller}(send_mail(address)), the "
                "function was called now, in the view, and this is what it returned: pass "
                f"the function and its arguments instead, {caller}(send_mail, address)."
            )
        raise InvalidCallbackError(msg)
    target: Any = func
    while isinstance(target, functools.partial):
        target = target.func
    if not inspect.isroutine(target) and not inspect.isclass(target):
        target = type(target).__call__  # A callable object: look at its __call__.
    if inspect.iscoroutinefunction(target):
        return True
    if inspect.isasyncgenfunction(target) or inspect.isgeneratorfunction(target):
        msg = (
            f"{caller}() got the generator function {callable_name(func)}; calling it "
            "would only create a generator and never run its body. Pass a plain "
            "function or an async def function."
        )
        raise InvalidCallbackError(msg)
    return False


def _short(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        return "an object with a failing repr"
    return text if len(text) <= 80 else f"{text[:80]}..."


def callable_name(func: object) -> str:
    """Return ``module.qualname`` of *func*, looking through partials and callable objects.

    Never raises: a name is needed to report the job, whatever the job is.
    """
    try:
        if isinstance(func, NamedCall):
            return func.name
        if isinstance(func, functools.partial):
            return f"partial({callable_name(func.func)})"
        owner: Any = func if hasattr(func, "__qualname__") else type(func)
        module = getattr(owner, "__module__", None)
        return f"{module}.{owner.__qualname__}" if module else str(owner.__qualname__)
    except Exception:  # A __qualname__ or __module__ property that raises.
        return f"<a {type(func).__name__} object>"


def _takes_delivery(func: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # Some builtins have no signature; call them bare.
        return False
    for args in ((None,), ()):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return bool(args)
    msg = (
        f"The after_response hook {callable_name(func)} cannot be called with no "
        "argument, nor with one Delivery. Give it no parameters, or one."
    )
    raise InvalidCallbackError(msg)


def tally(names: Iterable[str] | Mapping[str, int]) -> str:
    """``"3 x mail.send, 1 x audit.write"``: how many of each name (or the counts given), most
    first, for log lines."""
    return ", ".join(f"{count} x {name}" for name, count in Counter(names).most_common())
