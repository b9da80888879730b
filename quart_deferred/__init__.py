"""Deferred request callbacks and supervised post-response work for Quart."""

from .callbacks import after_this_request
from .exceptions import (
    ContextError,
    DeferredError,
    EnqueueError,
    InvalidCallbackError,
    InvalidOptionError,
    NotInitialisedError,
    OverloadedError,
)
from .extension import QuartDeferred
from .metrics import Latency, PROMETHEUS_CONTENT_TYPE, render_prometheus
from .post_response import after_this_response, Delivery
from .queues import enqueue_after_response, QueueAdapter
from .runner import Stats

__all__ = [
    "ContextError",
    "DeferredError",
    "Delivery",
    "EnqueueError",
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
