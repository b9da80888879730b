"""_request: where a request's registrations are kept, and found again."""

from __future__ import annotations

import inspect
from typing import Any

from quart import Quart, Response

from quart_deferred import after_this_request, QuartDeferred
from quart_deferred._compat import app_context


async def finalize(app: Quart, response: Response) -> None:
    """Run the request's after_request functions, as Quart does at the end of a request."""
    process: Any = app.process_response
    if "ctx" in inspect.signature(process).parameters:  # Quart 0.23+ passes its context.
        await process(app_context(), response)
    else:
        await process(response)


async def test_g_shared_by_two_requests_keeps_each_ones_callbacks_apart() -> None:
    """Without the ASGI layer the callbacks live on g; a g that outlives a request does not
    hand them to the next one."""
    app = Quart(__name__)
    QuartDeferred(app)
    calls: list[str] = []
    async with app.app_context():
        async with app.test_request_context("/first"):
            after_this_request(lambda response: calls.append("first"))
        async with app.test_request_context("/second"):
            # Before Quart 0.23 both requests share the app context's g here.
            after_this_request(lambda response: calls.append("second"))
            await finalize(app, Response("ok"))
    assert calls == ["second"]
