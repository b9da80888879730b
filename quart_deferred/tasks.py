"""Tasks: functions registered with ``@deferred.task``, which can be journaled and retried.

A task is a module-level function under a stable name (its module and
qualified name, or ``name=``), so that another process, after a restart,
can find it again. It gets its arguments and nothing of the request: it
always runs in a fresh app context, without ``request``, ``g`` or
``session``, even the first time, so a task that works once works on
replay. Its arguments are encoded when it is scheduled (JSON unless the
task names a serializer), so an argument that cannot be kept is an error
at the call, not a lost job later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import Context, ContextVar
from dataclasses import dataclass
import functools
import inspect
import json
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from .exceptions import ContextError, InvalidArgumentError, InvalidCallbackError
from .jobs import callable_name, is_async, NamedCall, When

P = ParamSpec("P")
INF = float("inf")
R = TypeVar("R")


class Serializer(Protocol):
    """Turns a task's arguments into text and back, as the ``json`` module does."""

    def dumps(self, obj: Any, /) -> str: ...

    def loads(self, text: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class CurrentJob:
    """The durable job a task is running for; see ``current_job()``.

    Attributes:
        id: The job's id: the same on every attempt and after a restart, so a
            task can use it to do its work once (an idempotency key).
        name: The task's registered name.
        attempt: 1 on the first attempt, 2 on the first retry, and so on.
    """

    id: str
    name: str
    attempt: int


_current: ContextVar[CurrentJob] = ContextVar("quart_deferred_current_job")


def current_job() -> CurrentJob:
    """Return the job the running task is an attempt of; a ``ContextError`` outside a task."""
    try:
        return _current.get()
    except LookupError:
        msg = (
            "current_job() was called outside a task. It names the durable job a function "
            "registered with @deferred.task is running for; call it inside such a function."
        )
        raise ContextError(msg) from None


class Retrying(Exception):  # noqa: N818  # Not an error of the caller's: a state.
    """An attempt failed and the next is scheduled (its cause is the attempt's error).

    The runner counts the attempt as failed without logging it again: the
    retry's WARNING line has said it, and the last attempt's failure is logged
    at ERROR as any job's.
    """


def run_as(job: CurrentJob, context: Context) -> None:
    """Make *job* what ``current_job()`` returns for code running in *context*."""
    context.run(_current.set, job)


class Task(Generic[P, R]):
    """A function registered with ``@deferred.task``. Calling it calls the function now."""

    def __init__(
        self,
        func: Callable[P, R],
        name: str,
        retries: int,
        retry_delay: float,
        max_delay: float,
        serializer: Serializer,
    ) -> None:
        self.func = func
        self.name = name
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_delay = max_delay
        self.serializer = serializer
        self.is_async = is_async(func, "task")
        self._signature = _signature(func)
        # (fewest, most) positional arguments when the parameters are all plain positional
        # ones: then a call without keyword arguments is checked by counting them.
        self._fits = _positional_range(self._signature)
        functools.update_wrapper(self, func)  # Its name, module and docstring, for logs.

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def encode(self, args: tuple[Any, ...], kwargs: dict[str, Any], caller: str) -> str:
        """Return the arguments as the journal keeps them; a clear error for what it cannot."""
        fits = self._fits
        if kwargs or fits is None or not fits[0] <= len(args) <= fits[1]:
            self._bind(args, kwargs, caller)  # The full check: a clear error if they don't fit.
        try:
            return self.serializer.dumps([list(args), kwargs])
        except (TypeError, ValueError, OverflowError) as error:
            named = self._bind(args, kwargs, caller)
            for parameter, value in named:
                try:
                    self.serializer.dumps(value)
                except (TypeError, ValueError, OverflowError):
                    msg = (
                        f"{caller}() cannot keep the argument {parameter}={_short(value)} of the "
                        f"task {self.name}: a {type(value).__name__} cannot be serialized "
                        f"({error}). A task may run in another process after a restart, so it "
                        "gets only what the journal can keep: pass plain values (an id, an "
                        "address, a dict of str, int, float, bool, None), not objects, or give "
                        "the task a serializer=."
                    )
                    raise InvalidArgumentError(msg) from None
            msg = f"{caller}() cannot serialize the arguments of the task {self.name}: {error}."
            raise InvalidArgumentError(msg) from None

    def _bind(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], caller: str
    ) -> list[tuple[str, Any]]:
        if self._signature is None:
            return [(str(index), value) for index, value in enumerate(args)] + list(kwargs.items())
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as error:
            msg = f"{caller}() cannot call the task {self.name} with these arguments: {error}."
            raise InvalidArgumentError(msg) from None
        return list(bound.arguments.items())

    def label(self, arguments: str) -> str:
        """The name a call of this task is logged and traced under."""
        return self.name

    def gives_up(self, attempts: int, age: float, config: Mapping[str, Any]) -> bool:
        """Whether a call that has failed *attempts* times, *age* seconds old, is dead."""
        return attempts > self.retries

    def limit(self, attempts: int, config: Mapping[str, Any]) -> str:
        """Say, for the log line of a dead call, which limit it reached."""
        return f"{attempts} of {self.retries + 1}"

    def decode(self, text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = self.serializer.loads(text)
        return tuple(args), dict(kwargs)


class TaskCall(NamedCall):
    """One scheduled call of a task: what a durable job's ``Job.func`` is."""

    __slots__ = (
        "arguments",
        "attempt",
        "created",
        "id",
        "origin",
        "runtime",
        "task",
        "when",
        "written",
    )

    def __init__(
        self, task: Task[..., Any], job_id: str, arguments: str, origin: str, created: float
    ) -> None:
        self.task = task
        self.name = task.label(arguments)
        self.created = created  # time.time() when it was first scheduled.
        self.id = job_id
        self.arguments = arguments
        self.origin = origin
        self.attempt = 0  # Attempts that have ended.
        self.when: When = "always"
        self.runtime: Any = None  # The _durable.Runtime that runs it; set when it is scheduled.
        # Awaited before the first attempt when the record was queued but not awaited
        # (work of an exchange that ended without a complete response).
        self.written: Any = None

    async def __call__(self) -> None:
        await self.runtime.attempt(self)


def register_task(
    tasks: dict[str, Task[..., Any]],
    func: Callable[P, R],
    name: str | None,
    retries: int,
    retry_delay: float,
    max_delay: float,
    serializer: Serializer,
) -> Task[P, R]:
    """Check a ``@deferred.task`` registration and add it to *tasks*."""
    if isinstance(func, Task):
        msg = f"{func.name} is a task already: register a function with @deferred.task once."
        raise InvalidCallbackError(msg)
    name = name_of(func, name)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        msg = f"@deferred.task got retries={retries!r}; give a whole number of 0 or more."
        raise InvalidArgumentError(msg)
    for option, value in (("retry_delay", retry_delay), ("max_delay", max_delay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < INF:
            msg = f"@deferred.task got {option}={value!r}: give a finite number of seconds."
            raise InvalidArgumentError(msg)
    if not all(callable(getattr(serializer, method, None)) for method in ("dumps", "loads")):
        msg = (
            f"@deferred.task got serializer={serializer!r}; give an object with dumps() and "
            "loads(), as the json module has."
        )
        raise InvalidArgumentError(msg)
    other = tasks.get(name)
    if other is not None and other.func is not func:
        msg = (
            f"Two tasks are registered as {name}: {callable_name(other.func)} and "
            f"{callable_name(func)}. Give one of them another name=."
        )
        raise InvalidCallbackError(msg)
    task = Task(func, name, retries, float(retry_delay), float(max_delay), serializer)
    tasks[name] = task
    return task


def name_of(func: Callable[..., Any], name: str | None) -> str:
    """Return the name a task is registered under; refuse what another process cannot find."""
    if name is not None:
        if not isinstance(name, str) or not name:
            msg = f"@deferred.task got name={name!r}; give a non-empty string, or leave it out."
            raise InvalidArgumentError(msg)
        return name
    qualname = getattr(func, "__qualname__", "")
    if not inspect.isfunction(func) or "<" in qualname:
        msg = (
            f"@deferred.task needs a function defined at the top level of a module, got "
            f"{callable_name(func)}. A durable task may run in another process after a "
            "restart, which finds it by its module and name, and cannot find a function "
            "defined inside another function, a lambda, or an object. Move it to the top "
            "level of a module (imported when the app starts), or register it there with "
            "name='...'."
        )
        raise InvalidCallbackError(msg)
    return f"{func.__module__}.{qualname}"


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def _positional_range(signature: inspect.Signature | None) -> tuple[int, int] | None:
    if signature is None:
        return None
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = list(signature.parameters.values())
    if not all(parameter.kind in plain for parameter in parameters):
        return None
    required = sum(parameter.default is inspect.Parameter.empty for parameter in parameters)
    return required, len(parameters)


def _short(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        return f"<a {type(value).__name__} object>"
    return text if len(text) <= 60 else f"{text[:60]}..."


JSON: Serializer = json  # The module has dumps() and loads().
