"""Deferred request callbacks and supervised post-response work for Quart."""

from .callbacks import after_this_request
from .exceptions import (
    ContextError,
    DeferredError,
    InvalidCallbackError,
    InvalidOptionError,
    NotInitialisedError,
    OverloadedError,
)
from .extension import QuartDeferred
from .post_response import after_this_response, Delivery
from .runner import Stats

__all__ = [
    "ContextError",
    "DeferredError",
    "Delivery",
    "InvalidCallbackError",
    "InvalidOptionError",
    "NotInitialisedError",
    "OverloadedError",
    "QuartDeferred",
    "Stats",
    "after_this_request",
    "after_this_response",
]
