"""The documented call forms, as a type checker sees them (checked by tests/test_typing.py).

A line whose comment starts with ``E:`` must get a mypy error whose message
contains the rest of the comment; every other line must get none. Never
imported or run.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from quart import Response
from typing_extensions import assert_type

from quart_deferred import after_this_request, after_this_response, enqueue_after_response


async def send_mail(address: str, subject: str = "Welcome") -> None: ...


def write_audit(user_id: int, action: str, /) -> None: ...


def plain_forms() -> None:
    after_this_response(send_mail, "ada@example.com")
    after_this_response(send_mail, "ada@example.com", subject="Hi")
    after_this_response(send_mail, 123)  # E: No overload variant
    after_this_response(send_mail, "ada", subjet="Hi")  # E: Unexpected keyword argument "subjet"
    after_this_response(write_audit, 1, "signup")
    after_this_response(write_audit, "1", "signup")  # E: No overload variant


def when_forms() -> None:
    after_this_response(send_mail, "ada@example.com", when="success")
    after_this_response(send_mail, "ada@example.com", when="failure", subject="Hi")
    after_this_response(send_mail, 123, when="success")  # E: Argument 2 to "after_this_response"
    after_this_response(write_audit, 1, "signup", when="always")
    after_this_response(write_audit, 1, 2, when="always")  # E: Argument 3 to "after_this_response"
    after_this_response(write_audit, 1, "a", "b", when="always")  # E: Too many arguments
    # A wrong literal beside a function: mypy reports the last form (see README, Typing).
    after_this_response(send_mail, "ada", when="sucess")  # E: Unexpected keyword argument "when"


def key_forms() -> None:
    scheduled = after_this_response(send_mail, "ada@example.com", key="mail:ada")
    assert_type(scheduled, bool)
    assert_type(after_this_response(write_audit, 1, "x", key="k", when="success"), bool)
    after_this_response(send_mail, 123, key="mail:ada")  # E: Argument 1 to "after_this_response"
    after_this_response(send_mail, "ada", key=5)  # E: Unexpected keyword argument "key"


def decorator_forms() -> None:
    @after_this_response
    async def audit() -> None: ...

    @after_this_response(when="failure")
    async def audit_failure() -> None: ...

    @after_this_response(when="sucess")  # E: No overload variant
    async def audit_typo() -> None: ...

    assert_type(audit, Callable[[], Coroutine[Any, Any, None]])
    assert_type(audit_failure, Callable[[], Coroutine[Any, Any, None]])


def request_callbacks() -> None:
    @after_this_request
    def set_cookie(response: Response) -> Response:
        response.set_cookie("seen", "1")
        return response

    @after_this_request
    async def log_it(response: Response) -> None: ...

    @after_this_request  # E: Value of type variable
    def five(response: Response) -> int:
        return 5


def queue_forms(task: object) -> None:
    enqueue_after_response(task, 1, when="always", key="k")
    enqueue_after_response(task, when="sometimes")  # E: Argument "when" to "enqueue_after_response"
