"""The pytest plugin, used from a test project exactly as a user would (pytester)."""

from __future__ import annotations

import asyncio

import pytest
from quart import Quart

from quart_deferred import after_this_response, ContextError, QuartDeferred

from .conftest import wait

pytest_plugins = ["pytester"]

USER_APP = """
import asyncio

from quart import Quart

from quart_deferred import after_this_response, QuartDeferred

app = Quart(__name__)
deferred = QuartDeferred(app)
outbox = []


async def send_welcome_mail(address):
    await asyncio.sleep(0)
    outbox.append(address)


async def broken_mail(address):
    raise ConnectionError("SMTP server down")


@app.post("/signup")
async def signup():
    after_this_response(send_welcome_mail, "ada@example.com")
    return "created", 201


@app.post("/broken")
async def broken():
    after_this_response(broken_mail, "bob@example.com")
    return "created", 201
"""

USER_TESTS = """
import pytest

from app import app, deferred, outbox


async def test_the_mail_goes_out():
    response = await app.test_client().post("/signup")
    assert response.status_code == 201
    assert await deferred.wait_for(response) == []
    assert outbox == ["ada@example.com"]


async def test_a_broken_job_hides_behind_a_201():
    response = await app.test_client().post("/broken")
    assert response.status_code == 201
    [error] = await deferred.wait_for(response)
    assert isinstance(error, ConnectionError)


@pytest.mark.quart_deferred_strict
async def test_strict_mode_fails_the_test():
    response = await app.test_client().post("/broken")
    assert response.status_code == 201
    await deferred.wait_for(response)
"""


@pytest.fixture(name="project")
def _project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(app=USER_APP, test_signup=USER_TESTS)
    return pytester


def test_wait_for_and_strict_mode_in_a_users_project(project: pytest.Pytester) -> None:
    """In a user's project, wait_for waits for one response's work and strict mode fails the broken
    test."""
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_strict_mode_fails_the_test*",
            "*1 post-response job(s) failed during this test (quart_deferred_strict)*",
            "*broken_mail for POST /broken failed*",
            "*ConnectionError: SMTP server down*",
        ]
    )


def test_strict_mode_for_every_test_from_the_ini_file(project: pytest.Pytester) -> None:
    """quart_deferred_strict = true in the ini file turns strict mode on for every test."""
    project.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "quart_deferred_strict = true\n"
    )
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)


def test_wait_for_needs_no_plugin(project: pytest.Pytester) -> None:
    """With the plugin turned off, wait_for() still waits for one response's work."""
    result = project.runpytest_subprocess(
        "-p", "no:quart_deferred", "-p", "no:cacheprovider", "-k", "not strict"
    )
    result.assert_outcomes(passed=2)


UNTOUCHED_TESTS = """
from quart import Quart
from quart.testing.connections import TestHTTPConnection


def test_the_test_client_is_quarts_own(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("quart_deferred")
    assert TestHTTPConnection.as_response.__module__ == "quart.testing.connections"


async def test_a_response_of_an_app_without_the_extension_is_unmarked():
    app = Quart(__name__)

    @app.get("/")
    async def index():
        return "ok"

    response = await app.test_client().get("/")
    assert not hasattr(response, "quart_deferred_exchange")
"""


def test_the_plugin_patches_nothing(project: pytest.Pytester) -> None:
    """Loading the plugin leaves Quart's test client as it is, for every project's tests."""
    project.makepyfile(test_untouched=UNTOUCHED_TESTS)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "test_untouched.py")
    result.assert_outcomes(passed=2)


async def test_wait_for_waits_for_that_request_only(app: Quart, deferred: QuartDeferred) -> None:
    """The second request's work is still blocked when the first one's is waited for."""
    release = asyncio.Event()
    ran: list[str] = []

    async def job(name: str) -> None:
        if name == "slow":
            await release.wait()
        ran.append(name)

    @app.get("/<name>")
    async def view(name: str) -> str:
        after_this_response(job, name)
        return name

    client = app.test_client()
    slow = await client.get("/slow")
    quick = await client.get("/quick")
    assert await wait(deferred.wait_for(quick)) == []
    assert ran == ["quick"]
    release.set()
    assert await wait(deferred.wait_for(slow)) == []
    assert ran == ["quick", "slow"]


async def test_wait_for_a_response_without_work_returns_at_once(
    app: Quart, deferred: QuartDeferred
) -> None:
    """wait_for returns [] at once for a response without work, and refuses a non-response."""

    @app.get("/")
    async def index() -> str:
        return "ok"

    response = await app.test_client().get("/")
    assert await wait(deferred.wait_for(response)) == []
    with pytest.raises(ContextError, match="cannot tell which request"):
        await deferred.wait_for("not a response")
