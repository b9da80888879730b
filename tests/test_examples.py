"""The demo app in examples/app.py works as the README says, served by hypercorn."""

from __future__ import annotations

import logging

import httpx
import pytest

from examples.app import app, deferred

from .servers import running


async def test_demo_language_cookie_signup_and_after_response_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The demo app: the language cookie, the signup mail after the 201, the after_response log
    line."""
    caplog.set_level(logging.INFO)
    app.config["WELCOME_MAIL_SECONDS"] = 0.01
    async with running(app, access_log=True) as url, httpx.AsyncClient(base_url=url) as http:
        home = await http.get("/", headers={"Accept-Language": "de"})
        assert home.text == "Hello! Your language is de.\n"
        assert "user_lang=de" in home.headers["set-cookie"]
        await deferred.join(timeout=5, app=app)

        signup = await http.post("/signup", data={"email": "ada@example.com"})
        assert signup.status_code == 201
        await deferred.join(timeout=5, app=app)

    lines = [r.getMessage() for r in caplog.records if r.name in ("demo", "hypercorn.access")]
    access_get = next(i for i, line in enumerate(lines) if '"GET / 1.1" 200' in line)
    after_get = lines.index("after response: GET / -> 200")
    assert access_get < after_get, "the hook runs after the server's access-log line"
    access_post = next(i for i, line in enumerate(lines) if '"POST /signup 1.1" 201' in line)
    assert access_post < lines.index("welcome e-mail sent to ada@example.com")
