"""Latency figures in ``stats()`` and their Prometheus rendering, parsed back."""

from __future__ import annotations

import asyncio
import math

from prometheus_client.parser import text_string_to_metric_families
import pytest
from quart import Quart

from quart_deferred import (
    after_this_response,
    InvalidOptionError,
    Latency,
    PROMETHEUS_CONTENT_TYPE,
    QuartDeferred,
    render_prometheus,
    Stats,
)
from quart_deferred.metrics import LatencyRecorder, WINDOW

from .conftest import Client, wait


async def test_stats_measure_the_wait_and_the_duration_of_jobs(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """With one worker, the second job waits at least as long as the first one runs."""
    app.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 1
    first_started = asyncio.Event()

    async def job(name: str) -> None:
        if name == "first":
            first_started.set()
            await asyncio.sleep(0.05)

    @app.get("/<name>")
    async def view(name: str) -> str:
        after_this_response(job, name)
        return name

    await client.get("/first")
    await wait(first_started.wait())
    await client.get("/second")
    await deferred.join(timeout=5)

    stats = deferred.stats()
    assert stats.wait.count == stats.duration.count == 2
    assert stats.duration.max >= 0.05 and stats.duration.sum >= stats.duration.max
    assert stats.duration.p99 == stats.duration.max
    assert stats.wait.p99 == stats.wait.max > 0
    assert stats.wait.p50 is not None and stats.wait.p50 <= stats.wait.p99


def test_quantiles_cover_the_last_window_of_jobs() -> None:
    """Latency quantiles cover the last WINDOW samples; count, sum and max cover all."""
    recorder = LatencyRecorder()
    for _ in range(WINDOW):
        recorder.samples.append(10.0)  # Old samples, pushed out of the window below.
    for millis in range(1, 101):
        recorder.samples.append(millis / 1000)
    assert Latency() == LatencyRecorder().snapshot()
    latency = recorder.snapshot()
    assert latency.count == WINDOW + 100 and latency.max == 10.0
    assert math.isclose(latency.sum, WINDOW * 10.0 + 5.05)
    assert latency.p50 == 10.0  # 924 of the last 1,024 samples are 10 s.
    recorder.window.clear()
    for millis in range(1, 101):
        recorder.samples.append(millis / 1000)
    assert (recorder.snapshot().p50, recorder.snapshot().p99) == (0.05, 0.099)


async def test_prometheus_text_parses_back_to_the_same_figures(
    app: Quart, deferred: QuartDeferred, client: Client
) -> None:
    """render_prometheus() parses back to the figures of stats()."""

    async def fails() -> None:
        raise RuntimeError("injected")

    @app.get("/")
    async def index() -> str:
        after_this_response(fails)
        after_this_response(print, "ok", when="failure")  # Skipped.
        after_this_response(asyncio.sleep, 0)
        return "ok"

    @app.get("/metrics")
    async def metrics() -> tuple[str, dict[str, str]]:
        labels = {"app": 'shop "eu"\\1'}
        return render_prometheus(deferred.stats(), labels), {
            "Content-Type": PROMETHEUS_CONTENT_TYPE
        }

    await client.get("/")
    await deferred.join(timeout=5)
    stats = deferred.stats()
    reply = await client.get("/metrics")
    assert reply.headers["Content-Type"] == PROMETHEUS_CONTENT_TYPE

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }
    app_label = ("app", 'shop "eu"\\1')

    def value(name: str, **labels: str) -> float:
        return samples[f"quart_deferred_{name}", tuple(sorted([app_label, *labels.items()]))]

    assert value("jobs_scheduled_total") == stats.scheduled == 2
    assert value("jobs_waiting") == value("jobs_running") == 0
    assert value("jobs_finished_total", outcome="succeeded") == 1
    assert value("jobs_finished_total", outcome="failed") == 1
    assert value("jobs_finished_total", outcome="timed_out") == 0
    assert value("jobs_finished_total", outcome="cancelled") == 0
    assert value("jobs_skipped_total") == 1
    for name, latency in (
        ("job_wait_seconds", stats.wait),
        ("job_duration_seconds", stats.duration),
    ):
        assert value(f"{name}_count") == latency.count == 2
        assert value(f"{name}_sum") == pytest.approx(latency.sum)
        assert value(f"{name}_max") == pytest.approx(latency.max)
        assert value(name, quantile="0.5") == pytest.approx(latency.p50)
        assert value(name, quantile="0.99") == pytest.approx(latency.p99)


def test_before_any_job_the_quantiles_are_nan_and_labels_are_optional() -> None:
    """Before any job the quantiles are NaN and the page still parses."""
    families = {f.name: f for f in text_string_to_metric_families(render_prometheus(Stats()))}
    quantiles = [s.value for s in families["quart_deferred_job_wait_seconds"].samples if s.labels]
    assert len(quantiles) == 2 and all(math.isnan(q) for q in quantiles)
    assert families["quart_deferred_jobs_scheduled"].samples[0].value == 0


@pytest.mark.parametrize("name", ["1app", "app-name", "quantile"])
def test_a_bad_label_name_is_a_clear_error(name: str) -> None:
    """A label name Prometheus would reject is refused, naming it."""
    with pytest.raises(InvalidOptionError, match=f"got the label name '{name}'"):
        render_prometheus(Stats(), {name: "x"})


async def test_recording_stays_bounded_between_snapshots(
    app: Quart, deferred: QuartDeferred
) -> None:
    """The runner folds its samples in every WINDOW jobs: memory stays flat with no snapshot."""

    async def noop() -> None:
        pass

    async with app.app_context():
        for _ in range(10 * WINDOW + 3):
            deferred.start_soon(noop)
        await deferred.join(timeout=5)
    counters = app.extensions["quart_deferred"].counters
    assert len(counters.wait.samples) < WINDOW
    assert len(counters.duration.samples) < WINDOW
    latency = deferred.stats().wait
    assert latency.count == 10 * WINDOW + 3
    assert len(counters.wait.window) == WINDOW
