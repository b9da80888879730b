"""OpenTelemetry: one span per post-response job, linked to the request's span."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
import subprocess
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
import pytest
from quart import Quart

from quart_deferred import after_this_response, QuartDeferred

from .conftest import wait


@pytest.fixture(name="exporter")
def _exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider with an in-memory exporter, as the app's global provider.

    Set for this test only (OpenTelemetry lets a process set its provider once).
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


def job_spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name.rsplit(".", 1)[-1]: span for span in exporter.get_finished_spans()}


async def _serve_orders(app: Quart, deferred: QuartDeferred, *kinds: str) -> int:
    """Request /orders/<kind> for each kind inside a request span; return its span id."""
    tracer = trace.get_tracer("the app")
    request_span_ids = []

    async def ok() -> None:
        with tracer.start_as_current_span("inner"):  # The job's own instrumented call.
            pass

    async def error() -> None:
        raise ValueError("injected")

    async def timeout() -> None:
        await asyncio.Event().wait()

    @app.post("/orders/<kind>")
    async def order(kind: str) -> tuple[str, int]:
        # Stands in for OpenTelemetry's ASGI middleware: the request's span is current.
        with tracer.start_as_current_span("POST /orders") as span:
            request_span_ids.append(span.get_span_context().span_id)
            after_this_response({"ok": ok, "error": error, "timeout": timeout}[kind])
        return kind, 201

    for kind in kinds:
        await app.test_client().post(f"/orders/{kind}")
    await deferred.join(timeout=5)
    return request_span_ids[0]


async def test_a_job_span_is_linked_to_the_request_span_not_a_child(
    app: Quart, deferred: QuartDeferred, exporter: InMemorySpanExporter
) -> None:
    """A job's span is linked to the request's span, not its child, and is current while the job
    runs."""
    request_span_id = await _serve_orders(app, deferred, "ok")
    spans = job_spans(exporter)
    job = spans["ok"]
    assert job.name.endswith("_serve_orders.<locals>.ok")
    assert job.parent is None
    assert [link.context.span_id for link in job.links] == [request_span_id]
    assert spans["inner"].parent is not None
    assert spans["inner"].parent.span_id == job.context.span_id  # Current while the job runs.
    attributes = dict(job.attributes or {})
    wait_seconds = attributes.pop("quart_deferred.wait_seconds")
    assert isinstance(wait_seconds, float) and wait_seconds >= 0
    assert attributes == {
        "code.function": job.name,
        "quart_deferred.when": "always",
        "http.request.method": "POST",
        "url.path": "/orders/ok",
        "http.response.status_code": 201,
        "quart_deferred.outcome": "ok",
    }
    assert job.status.status_code == StatusCode.UNSET


async def test_failure_and_timeout_are_marked_on_their_spans(
    app: Quart, deferred: QuartDeferred, exporter: InMemorySpanExporter
) -> None:
    """Failed and timed-out jobs have their outcome and an error status on their spans."""
    app.config["QUART_DEFERRED_TASK_TIMEOUT"] = 0.05
    await _serve_orders(app, deferred, "error", "timeout")
    spans = job_spans(exporter)
    for name, outcome in (("error", "error"), ("timeout", "timeout")):
        attributes = spans[name].attributes or {}
        assert attributes["quart_deferred.outcome"] == outcome
        assert spans[name].status.status_code == StatusCode.ERROR
    [event] = spans["error"].events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.message"] == "injected"


async def test_a_job_cancelled_at_shutdown_says_so_on_its_span(
    app: Quart, deferred: QuartDeferred, exporter: InMemorySpanExporter
) -> None:
    """A job cancelled at shutdown has outcome 'cancelled' on its span."""
    app.config["QUART_DEFERRED_SHUTDOWN_TIMEOUT"] = 0
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    @app.get("/")
    async def index() -> str:
        after_this_response(hangs)
        return "ok"

    async with app.test_app() as test_app:
        await test_app.test_client().get("/")
        await wait(started.wait())
    [span] = exporter.get_finished_spans()
    assert (span.attributes or {})["quart_deferred.outcome"] == "cancelled"
    assert span.status.status_code == StatusCode.ERROR


def test_importing_the_package_does_not_import_opentelemetry() -> None:
    """Importing the package does not import OpenTelemetry."""
    code = "import quart_deferred, sys; print('opentelemetry' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


async def test_a_tracer_provider_set_after_the_runner_started_is_picked_up(
    app: Quart, deferred: QuartDeferred, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a provider the runner looks again later (here: at once, RECHECK=0)."""
    from quart_deferred.tracing import Tracing

    monkeypatch.setattr(Tracing, "RECHECK", 0.0)

    async def job() -> None:
        pass

    @app.get("/")
    async def index() -> str:
        after_this_response(job)
        return "ok"

    client = app.test_client()
    await client.get("/")  # No provider yet: no span, and the runner is running.
    await deferred.join(timeout=5)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    await client.get("/")
    await deferred.join(timeout=5)
    assert [span.name.rsplit(".", 1)[-1] for span in exporter.get_finished_spans()] == ["job"]
    provider.shutdown()
