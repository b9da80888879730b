"""OpenTelemetry spans for post-response jobs, when ``opentelemetry-api`` is installed.

Each job runs in a span of its own, named after the job, and current while
the job runs, so the job's own instrumented calls become its children. The
request's span has ended by then, so the job's span is a new root that links
to it rather than a child of it.

Nothing here imports OpenTelemetry until a runner starts, and then only if it
is installed (``pip install quart-deferred[otel]``); spans are made only once
the app has set a tracer provider.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any, TYPE_CHECKING

from .jobs import method_of

if TYPE_CHECKING:
    from .jobs import Batch, Job


class Tracing:
    """The OpenTelemetry API, loaded once per runner; ``None`` from ``load`` without it."""

    RECHECK = 1.0  # Seconds between looks for a tracer provider while there is none.

    def __init__(self, trace: Any, context: Any) -> None:
        self._trace = trace
        self._context = context
        self._tracer: Any = None
        # A time.perf_counter() before which start() would return None, found
        # no tracer provider at its last look: the runner skips the call until then.
        self.quiet_until = 0.0

    @classmethod
    def load(cls) -> Tracing | None:
        try:
            from opentelemetry import context, trace
        except ImportError:
            return None
        return cls(trace, context)

    def start(self, job: Job, batch: Batch, wait: float, now: float) -> JobSpan | None:
        """Start and enter the span of *job*, or return ``None`` with no tracer provider set.

        *now* is ``time.perf_counter()``: without a provider, looking for one
        costs more than a job, so it is done at most once per ``RECHECK``.
        """
        trace = self._trace
        if self._tracer is None:
            if now < self.quiet_until:
                return None
            if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
                self.quiet_until = now + self.RECHECK
                return None  # The app has not set a tracer provider (yet).
            self._tracer = trace.get_tracer("quart_deferred", _version())
        request_span = trace.get_current_span().get_span_context()  # In the request's context.
        links = [trace.Link(request_span)] if request_span.is_valid else []
        source = batch.source
        attributes: dict[str, Any] = {
            "code.function": job.name,
            "quart_deferred.when": job.when,
            "quart_deferred.wait_seconds": wait,
        }
        if source is not None:
            attributes["http.request.method"] = method_of(source)
            attributes["url.path"] = source.path
        if batch.status is not None:
            attributes["http.response.status_code"] = batch.status
        span = self._tracer.start_span(
            job.name, context=self._context.Context(), links=links, attributes=attributes
        )
        token = self._context.attach(trace.set_span_in_context(span))
        return JobSpan(self, span, token)


class JobSpan:
    """One job's span, entered; ``end`` records the outcome and leaves it."""

    __slots__ = ("span", "token", "tracing")

    def __init__(self, tracing: Tracing, span: Any, token: object) -> None:
        self.tracing = tracing
        self.span = span
        self.token = token

    def end(self, outcome: str, error: BaseException | None) -> None:
        """*outcome* is one of ``ok``, ``error``, ``timeout``, ``cancelled``."""
        trace = self.tracing._trace
        span = self.span
        span.set_attribute("quart_deferred.outcome", outcome)
        if error is not None:
            span.record_exception(error)
        if outcome != "ok":
            span.set_status(trace.Status(trace.StatusCode.ERROR, outcome))
        span.end()
        self.tracing._context.detach(self.token)


def _version() -> str:
    try:
        return version("quart-deferred")
    except PackageNotFoundError:  # Run from a source tree that was never installed.
        return "0"
