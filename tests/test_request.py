"""_request: where a request's registrations are kept, and found again."""

from __future__ import annotations

from quart import g, Quart, Response

from quart_deferred import after_this_request, QuartDeferred


async def test_g_shared_by_two_requests_keeps_each_ones_callbacks_apart() -> None:
    """Without the ASGI layer the callbacks live on g; a g that outlives a request does not
    hand them to the next one."""
    app = Quart(__name__)
    QuartDeferred(app)
    calls: list[str] = []
    async with app.app_context():
        async with app.test_request_context("/first"):
            first_g = g._get_current_object()
            after_this_request(lambda response: calls.append("first"))
        async with app.test_request_context("/second"):
            assert g._get_current_object() is first_g  # The same g, as in a test.
            after_this_request(lambda response: calls.append("second"))
            await app.process_response(Response("ok"))
    assert calls == ["second"]
