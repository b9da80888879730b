"""De-duplication: ``after_this_response(..., key=...)`` schedules one job per key at a time."""

from __future__ import annotations

import asyncio

import pytest
from quart import Quart, request

from quart_deferred import after_this_response, InvalidOptionError, QuartDeferred

from .conftest import Client, wait


async def test_a_burst_of_1000_requests_with_one_key_runs_the_work_once(
    app: Quart, deferred: QuartDeferred
) -> None:
    """1,000 concurrent requests with the same key run the work once; the others are told False."""
    burst = 1000
    runs: list[str] = []
    answers: list[bool] = []
    arrived = 0
    all_in = asyncio.Event()

    async def recompute_feed(user: str) -> None:
        runs.append(user)

    @app.post("/like")
    async def like() -> str:
        nonlocal arrived
        answers.append(after_this_response(recompute_feed, "ada", key="feed:ada"))
        arrived += 1
        if arrived % burst == 0:
            all_in.set()
        await all_in.wait()  # The whole burst is in flight before any response goes out.
        return "liked"

    client = app.test_client()
    for number in (1, 2):
        all_in.clear()
        replies = await wait(asyncio.gather(*(client.post("/like") for _ in range(burst))), 60)
        await deferred.join(timeout=10)
        assert {reply.status_code for reply in replies} == {200}
        assert runs == ["ada"] * number, "once per burst"
        assert answers.count(True) == number
    assert answers.count(False) == 2 * (burst - 1)
    stats = deferred.stats()
    assert (stats.scheduled, stats.succeeded) == (2, 2)


async def test_a_key_is_free_again_once_its_work_has_ended_any_way(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """Skipped (``when`` did not match), failed or succeeded: the next request schedules anew."""
    answers: list[bool] = []

    async def job(outcome: str) -> None:
        if outcome == "fail":
            raise RuntimeError("injected")

    @app.get("/<outcome>")
    async def view(outcome: str) -> tuple[str, int]:
        answers.append(after_this_response(job, outcome, key="one", when="success"))
        return outcome, 500 if outcome == "error" else 200

    for outcome in ("error", "fail", "ok", "ok"):
        await client.get(f"/{outcome}")
        await deferred.join(timeout=5)
    assert answers == [True, True, True, True]
    stats = deferred.stats()
    assert (stats.skipped, stats.failed, stats.succeeded) == (1, 1, 2)


async def test_keys_are_independent_and_work_in_the_decorator_form(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """Different keys do not block each other, and key= works in the decorator form."""
    ran: list[str] = []

    @app.get("/")
    async def index() -> str:
        for user in request.args.getlist("user"):
            after_this_response(ran.append, user, key=f"feed:{user}")

        @after_this_response(key="audit")
        async def audit() -> None:
            ran.append("audit")

        @after_this_response(key="audit")
        async def audit_again() -> None:
            ran.append("audit again")

        return "ok"

    await client.get("/?user=ada&user=bob&user=ada")
    await deferred.join(timeout=5)
    assert ran == ["ada", "bob", "audit"]


@pytest.mark.parametrize("key", ["", 42, b"feed"])
async def test_a_bad_key_is_a_clear_error(app: Quart, key: object) -> None:
    """A key that is not a non-empty string is refused at the call."""
    errors: list[Exception] = []

    @app.get("/")
    async def index() -> str:
        try:
            after_this_response(print, key=key)  # type: ignore[call-overload]
        except InvalidOptionError as error:
            errors.append(error)
        return "ok"

    await app.test_client().get("/")
    [error] = errors
    assert f"got key={key!r}" in str(error) and "non-empty string" in str(error)
