"""The Quart-Deferred demo: ``nox -s demo`` serves it on http://127.0.0.1:5000.

Three examples in one app:

1. Flask's deferred-callback recipe: a ``before_request`` function remembers
   the user's language in a cookie, on a response that does not exist yet.
2. The ``AfterResponse`` extension's example: an app-wide function that runs
   after every response, so its log line comes after the server's access-log
   line for ``GET /``.
3. A signup view that answers 201 at once and sends the (simulated, slow)
   welcome e-mail after the response has gone out.

Try::

    curl -i http://127.0.0.1:5000/
    curl -i -X POST -d email=ada@example.com http://127.0.0.1:5000/signup
"""

from __future__ import annotations

import asyncio
import logging

from quart import current_app, g, Quart, request, Response

from quart_deferred import after_this_request, after_this_response, Delivery, QuartDeferred

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("demo")

app = Quart(__name__)
app.config["WELCOME_MAIL_SECONDS"] = 2.0  # How slow the pretend mail server is.
deferred = QuartDeferred(app)

# 1. Deferred request callbacks: set a cookie from a before_request function.


@app.before_request
async def detect_user_language() -> None:
    language = request.cookies.get("user_lang")
    if language is None:
        language = request.accept_languages.best_match(["en", "de", "fr"]) or "en"

        @after_this_request
        def remember_language(response: Response) -> None:
            response.set_cookie("user_lang", language)

    g.language = language


@app.get("/")
async def index() -> str:
    return f"Hello! Your language is {g.language}.\n"


# 2. An app-wide post-response function, like Flask's AfterResponse extension.


@deferred.after_response
async def log_delivery(delivery: Delivery) -> None:
    log.info("after response: %s %s -> %s", request.method, request.path, delivery.status_code)


# 3. Slow work the client should not wait for.


async def send_welcome_mail(address: str) -> None:
    await asyncio.sleep(current_app.config["WELCOME_MAIL_SECONDS"])
    log.info("welcome e-mail sent to %s", address)


@app.post("/signup")
async def signup() -> tuple[str, int]:
    form = await request.form
    address = form.get("email", "someone@example.com")
    after_this_response(send_welcome_mail, address, when="success")
    return f"Welcome, {address}! Check your inbox in a moment.\n", 201
