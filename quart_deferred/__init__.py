"""Deferred request callbacks and supervised post-response work for Quart."""

from .callbacks import after_this_request
from .exceptions import (
    ContextError,
    DeferredError,
    EnqueueError,
    InvalidArgumentError,
    InvalidCallbackError,
    InvalidOptionError,
    NotInitialisedError,
    OverloadedError,
)
from .extension import QuartDeferred
from .metrics import Latency, PROMETHEUS_CONTENT_TYPE, render_prometheus, Stats
from .post_response import after_this_response, Delivery
from .queues import enqueue_after_response, QueueAdapter

__version__ = "0.1.0"  # Also in pyproject.toml; a test checks that the two agree.

__all__ = [
    "ContextError",
    "DeferredError",
    "Delivery",
    "EnqueueError",
    "InvalidArgumentError",
    "InvalidCallbackError",
    "InvalidOptionError",
    "Latency",
    "NotInitialisedError",
    "OverloadedError",
    "PROMETHEUS_CONTENT_TYPE",
    "QuartDeferred",
    "QueueAdapter",
    "Stats",
    "after_this_request",
    "after_this_response",
    "enqueue_after_response",
    "render_prometheus",
]
