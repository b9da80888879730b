"""Bad input is refused where it is passed, with a message that says what to do."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
import functools
import gc
import threading

import pytest
from quart import Quart

from quart_deferred import (
    after_this_response,
    InvalidCallbackError,
    InvalidOptionError,
    QuartDeferred,
)


async def send_mail(address: str) -> None:
    pass


class AsyncCallable:
    async def __call__(self, address: str) -> None:
        self.address = address


async def _in_view(app: Quart, register: object) -> list[BaseException]:
    """Run *register* inside a view and return what it raised."""
    errors: list[BaseException] = []

    @app.get("/")
    async def index() -> str:
        try:
            register()  # type: ignore[operator]
        except Exception as error:
            errors.append(error)
        return "ok"

    await app.test_client().get("/")
    return errors


async def test_a_coroutine_object_is_refused_and_closed(app: Quart) -> None:
    """after_this_response(send_mail(x)): say how to call it; no 'never awaited' warning."""
    [error] = await _in_view(app, lambda: after_this_response(send_mail("a@b.c")))  # type: ignore[call-overload]
    assert isinstance(error, InvalidCallbackError)
    assert "Pass the function and its arguments instead" in str(error)
    gc.collect()  # An unclosed coroutine would warn here; warnings are errors in this suite.


async def test_a_non_callable_is_refused(app: Quart) -> None:
    """A non-callable is refused at the call, naming what was passed."""
    [error] = await _in_view(app, lambda: after_this_response("send_mail"))  # type: ignore[call-overload]
    assert isinstance(error, TypeError)
    assert "expected a function to call later, got 'send_mail' of type str" in str(error)


@pytest.mark.parametrize("kind", ["async generator", "generator"])
async def test_generator_functions_are_refused(app: Quart, kind: str) -> None:
    """Generator and async generator functions are refused at the call."""

    async def agen() -> AsyncIterator[int]:
        yield 1

    def gen() -> Iterator[int]:
        yield 1

    func, name = (agen, "agen") if kind == "async generator" else (gen, "gen")
    [error] = await _in_view(app, lambda: after_this_response(func))
    assert isinstance(error, InvalidCallbackError)
    assert "generator function" in str(error) and f".{name};" in str(error)


async def test_an_unknown_when_is_refused(app: Quart) -> None:
    """An unknown when= is refused at the call, listing the valid values."""
    [error] = await _in_view(
        app,
        lambda: after_this_response(send_mail, "x", when="sometimes"),  # type: ignore[call-arg]
    )
    assert isinstance(error, InvalidOptionError)
    assert "when='sometimes'" in str(error) and "'always'" in str(error)


async def test_async_partials_and_async_call_objects_are_awaited(
    app: Quart, deferred: QuartDeferred
) -> None:
    """Neither is sent to a thread, where it would return an un-awaited coroutine."""
    loop_thread = threading.get_ident()
    seen: list[tuple[str, bool]] = []

    async def record(kind: str) -> None:
        seen.append((kind, threading.get_ident() == loop_thread))

    callable_object = AsyncCallable()

    @app.get("/")
    async def index() -> str:
        after_this_response(functools.partial(record, "partial"))
        after_this_response(functools.partial(functools.partial(record), "nested partial"))
        after_this_response(callable_object, "object")
        return "ok"

    await app.test_client().get("/")
    await deferred.join(timeout=5)
    assert seen == [("partial", True), ("nested partial", True)]
    assert callable_object.address == "object"
    assert deferred.stats().succeeded == 3


async def test_a_sync_function_returning_a_coroutine_fails_clearly(
    app: Quart, deferred: QuartDeferred, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain function that returns a coroutine fails, saying it would never be awaited."""

    @app.get("/")
    async def index() -> str:
        after_this_response(lambda: send_mail("x"))
        return "ok"

    await app.test_client().get("/")
    await deferred.join(timeout=5)
    assert deferred.stats().failed == 1
    [record] = [r for r in caplog.records if r.exc_info]
    assert "returned an awaitable, which would never be awaited" in str(record.exc_info[1])  # type: ignore[index]
