"""Exceptions raised by Quart-Deferred.

    DeferredError
     ├── ContextError (RuntimeError)         wrong place or time to call
     │    └── NotInitialisedError            the app has no QuartDeferred
     ├── OverloadedError (RuntimeError)      too much work already waiting
     ├── EnqueueError                        a task could not be sent to its queue
     ├── InvalidCallbackError (TypeError)    not something we can call
     ├── InvalidArgumentError (TypeError)    an argument the queue cannot encode
     └── InvalidOptionError (ValueError)     a bad ``when=`` or config value

Each also subclasses the matching built-in, so ``except RuntimeError`` and
friends keep working.
"""

from __future__ import annotations


class DeferredError(Exception):
    """Raised when Quart-Deferred cannot do what was asked; the base of all its errors."""


class ContextError(DeferredError, RuntimeError):
    """Raised when a function is called outside the context it needs."""


class NotInitialisedError(ContextError):
    """Raised when the current app was never passed to ``QuartDeferred``."""

    @classmethod
    def for_app(cls, name: str) -> NotInitialisedError:
        return cls(
            f"QuartDeferred is not initialised on app {name!r}. Call QuartDeferred(app) "
            "or deferred.init_app(app) before serving."
        )


class OverloadedError(DeferredError, RuntimeError):
    """Raised when ``QUART_DEFERRED_MAX_PENDING`` jobs are already waiting; answer 503."""


class EnqueueError(DeferredError):
    """Raised (and logged) when a task could not be sent to its queue, retries included."""


class InvalidCallbackError(DeferredError, TypeError):
    """Raised when a callback is not a function we can call, or returns the wrong type."""


class InvalidArgumentError(DeferredError, TypeError):
    """Raised when an argument cannot be sent to a task queue: its serializer refused it."""


class InvalidOptionError(DeferredError, ValueError):
    """Raised when an option or a config value is out of range."""
