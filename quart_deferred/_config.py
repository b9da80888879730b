"""Configuration: the defaults, and one checked reader per kind of value.

Values are checked whenever they are read, not only at ``init_app``: a
value changed in ``app.config`` later is checked when a runner starts, or
when the call that uses it reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
import math
from typing import Any
import warnings

from .exceptions import InvalidOptionError

DEFAULTS: dict[str, Any] = {
    "QUART_DEFERRED_MAX_CONCURRENCY": 100,  # Batches running at once; more wait in FIFO order.
    "QUART_DEFERRED_TASK_TIMEOUT": None,  # Seconds per job; None for no limit.
    "QUART_DEFERRED_SHUTDOWN_TIMEOUT": 5.0,  # Seconds to drain at shutdown.
    "QUART_DEFERRED_MAX_PENDING": None,  # Jobs not yet started before new ones are refused.
    "QUART_DEFERRED_THREADS": 8,  # Threads for plain def jobs, apart from Quart's run_sync.
    "QUART_DEFERRED_ENQUEUE_RETRIES": 3,  # Retries of a failed enqueue_after_response send.
    "QUART_DEFERRED_ENQUEUE_TIMEOUT": 2.0,  # Seconds one send may take before it is retried.
    "QUART_DEFERRED_LOG_ARGUMENTS": False,  # Arguments in log lines: False, True or a function.
    "QUART_DEFERRED_ENQUEUE_MAX_AGE": 3600.0,  # With a journal: seconds a send is retried.
    "QUART_DEFERRED_JOURNAL": None,  # Where durable tasks are kept: "sqlite:///path", or None.
    "QUART_DEFERRED_JOURNAL_SYNC": "normal",  # "full": an fsync per commit (power loss).
    "QUART_DEFERRED_LEASE": 30.0,  # Seconds a process holds its tasks without renewing.
    "QUART_DEFERRED_JOURNAL_KEEP": 7 * 86400.0,  # Seconds done jobs are kept; None: for ever.
}

ArgumentRedactor = Callable[[tuple[Any, ...], dict[str, Any]], str]


def configure(config: MutableMapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """Fill in the defaults, put the init arguments on top, and check every value now."""
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)
    config.update(overrides)
    whole_number(config, "QUART_DEFERRED_MAX_CONCURRENCY")
    optional_whole_number(config, "QUART_DEFERRED_MAX_PENDING")
    whole_number(config, "QUART_DEFERRED_THREADS")
    whole_number(config, "QUART_DEFERRED_ENQUEUE_RETRIES", minimum=0)
    seconds(config, "QUART_DEFERRED_ENQUEUE_TIMEOUT")
    log_arguments(config)
    seconds(config, "QUART_DEFERRED_LEASE")
    seconds(config, "QUART_DEFERRED_ENQUEUE_MAX_AGE")
    optional_seconds(config, "QUART_DEFERRED_JOURNAL_KEEP")
    if optional_seconds(config, "QUART_DEFERRED_TASK_TIMEOUT") == 0:
        warnings.warn(
            "QUART_DEFERRED_TASK_TIMEOUT is 0, so every deferred job times out at once. "
            "Use None for no limit.",
            stacklevel=3,
        )
    if seconds(config, "QUART_DEFERRED_SHUTDOWN_TIMEOUT") == 0:
        warnings.warn(
            "QUART_DEFERRED_SHUTDOWN_TIMEOUT is 0, so deferred work still unfinished "
            "at shutdown is cancelled at once, without time to drain.",
            stacklevel=3,
        )


def whole_number(config: Mapping[str, Any], key: str, minimum: int = 1) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"{key} must be a whole number of {minimum} or more, got {value!r}."
        raise InvalidOptionError(msg)
    return value


def optional_whole_number(config: Mapping[str, Any], key: str) -> int | None:
    if config[key] is None:
        return None
    try:
        return whole_number(config, key)
    except InvalidOptionError:
        msg = f"{key} must be a whole number of 1 or more, or None, got {config[key]!r}."
        raise InvalidOptionError(msg) from None


def seconds(config: Mapping[str, Any], key: str) -> float:
    value = config[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        msg = f"{key} must be a finite number of seconds (0 or more), got {value!r}."
        raise InvalidOptionError(msg)
    return float(value)


def optional_seconds(config: Mapping[str, Any], key: str) -> float | None:
    if config[key] is None:
        return None
    try:
        return seconds(config, key)
    except InvalidOptionError:
        msg = (
            f"{key} must be a finite number of seconds (0 or more) or None, got "
            f"{config[key]!r}. None means no limit."
        )
        raise InvalidOptionError(msg) from None


def log_arguments(config: Mapping[str, Any]) -> bool | ArgumentRedactor:
    value = config["QUART_DEFERRED_LOG_ARGUMENTS"]
    if isinstance(value, bool) or callable(value):
        return value  # type: ignore[no-any-return]
    msg = (
        f"QUART_DEFERRED_LOG_ARGUMENTS must be False (log no arguments), True (log a "
        f"bounded repr of each) or a function (args, kwargs) -> str, got {value!r}."
    )
    raise InvalidOptionError(msg)


REPR_LIMIT = 200  # Characters of one argument's repr in a log line.


def show_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], setting: bool | ArgumentRedactor
) -> str:
    """The arguments as a log line shows them, under ``QUART_DEFERRED_LOG_ARGUMENTS``."""
    if setting is False:
        return (
            f"args=<{len(args)} positional and {len(kwargs)} keyword, not logged: set "
            "QUART_DEFERRED_LOG_ARGUMENTS to log them>"
        )
    if setting is True:
        positional = ", ".join(bounded_repr(arg) for arg in args) + ("," if len(args) == 1 else "")
        keyword = ", ".join(f"{name!r}: {bounded_repr(value)}" for name, value in kwargs.items())
        return f"args=({positional}) kwargs={{{keyword}}}"
    try:
        return cut(str(setting(args, kwargs)), 10 * REPR_LIMIT)
    except Exception as error:  # The redaction function failed: show nothing.
        return f"<arguments hidden: QUART_DEFERRED_LOG_ARGUMENTS raised {bounded_repr(error)}>"


def bounded_repr(value: object, limit: int = REPR_LIMIT) -> str:
    """``repr(value)``, cut to *limit* characters; never raises."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} object with a failing repr>"
    return cut(text, limit)


def cut(text: str, limit: int) -> str:
    """*text*, or its first *limit* characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...<{len(text) - limit} more characters>"
