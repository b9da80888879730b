"""Differences between the Quart versions we support (0.20 to 0.23).

Quart 0.23 merged the request and websocket contexts into the app context
(as Flask 3.2 did) and passes that context to its hooks explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
import inspect
from typing import Any, TYPE_CHECKING

from quart import Quart
from quart.globals import _cv_app

if TYPE_CHECKING:
    from quart.ctx import AppContext
    from quart.wrappers import BaseRequestWebsocket


def app_context() -> AppContext | None:
    """The current app context, or ``None`` outside one (Quart's private ContextVar)."""
    return _cv_app.get(None)


_REPORT_TAKES_CONTEXT = "ctx" in inspect.signature(Quart.handle_background_exception).parameters

# current_source() returns the current request or websocket, or None outside
# both. It is on every registration's path, so the Quart version is looked at
# once, here. The ContextVars are read directly: the `request` proxy would
# raise, and has_request_context() followed by the proxy costs twice as much.
try:
    from quart.globals import _cv_request, _cv_websocket
except ImportError:  # Quart 0.23+: the app context holds the request or websocket.

    def current_source() -> BaseRequestWebsocket | None:
        app_ctx: Any = _cv_app.get(None)
        return None if app_ctx is None else app_ctx._request or app_ctx._websocket

else:

    def current_source() -> BaseRequestWebsocket | None:
        request_ctx = _cv_request.get(None)
        if request_ctx is not None:
            return request_ctx.request_websocket
        websocket_ctx = _cv_websocket.get(None)
        return None if websocket_ctx is None else websocket_ctx.request_websocket


async def handle_background_exception(app: Quart, error: BaseException) -> None:
    """Call ``app.handle_background_exception`` with the arguments this Quart takes."""
    if _REPORT_TAKES_CONTEXT:
        await app.handle_background_exception(_cv_app.get(), error)  # type: ignore[call-arg, arg-type]
    else:
        await app.handle_background_exception(error)  # type: ignore[arg-type]


def from_test_client(scope: Mapping[str, Any]) -> bool:
    """Whether *scope* comes from Quart's test client (which sets a private key in it)."""
    return "_quart._preserve_context" in scope
