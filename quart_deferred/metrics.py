"""Latency figures for ``stats()``, and ``stats()`` in the Prometheus text format.

Two latencies are recorded per job: its wait, from the final send of its
response (or the ``start_soon`` call) to its first line, and its duration.
Each keeps a count, a sum and a maximum over all jobs, and the last
``WINDOW`` samples, from which ``stats()`` computes p50 and p99.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
import math
import re
from typing import TYPE_CHECKING

from .exceptions import InvalidOptionError

if TYPE_CHECKING:
    from .runner import Stats

WINDOW = 1024  # Samples behind the p50 and p99 figures.

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True, slots=True)
class Latency:
    """Seconds: ``count``, ``sum`` and ``max`` over every job so far; ``p50`` and ``p99``
    over the last 1,024 jobs (``None`` before the first)."""

    count: int = 0
    sum: float = 0.0
    max: float = 0.0
    p50: float | None = None
    p99: float | None = None


class LatencyRecorder:
    """Collects one latency.

    Recording is on every job's path, so it is a bare list append onto
    ``samples``; the samples are folded into the count, sum, maximum and
    window by ``fold()``, which the runner calls once there are ``WINDOW``
    of them, and which every snapshot calls.
    """

    __slots__ = ("count", "max", "samples", "sum", "window")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        self.samples: list[float] = []  # Recorded, not yet folded in.
        self.window: deque[float] = deque(maxlen=WINDOW)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def fold(self) -> None:
        samples = self.samples
        if samples:
            self.count += len(samples)
            self.sum += sum(samples)
            self.max = max(self.max, max(samples))
            self.window.extend(samples)
            samples.clear()

    def snapshot(self) -> Latency:
        self.fold()
        if not self.window:
            return Latency(self.count, self.sum, self.max)
        ordered = sorted(self.window)
        return Latency(
            self.count, self.sum, self.max, _quantile(ordered, 0.5), _quantile(ordered, 0.99)
        )


def _quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def render_prometheus(stats: Stats, labels: Mapping[str, str] | None = None) -> str:
    """Render *stats* in the Prometheus text exposition format (version 0.0.4).

    Serve it from a route of your own::

        @app.get("/metrics")
        async def metrics() -> tuple[str, dict[str, str]]:
            return render_prometheus(deferred.stats()), {"Content-Type": PROMETHEUS_CONTENT_TYPE}

    Arguments:
        stats: A snapshot from ``deferred.stats()``.
        labels: Labels for every sample, e.g. ``{"app": app.name}`` when
            several apps are rendered into one page.
    """
    return "".join(_lines(stats, _label_text(labels or {})))


def _lines(stats: Stats, labels: str) -> Iterator[str]:
    prefix = "quart_deferred_"

    def family(name: str, kind: str, help_text: str) -> str:
        return f"# HELP {prefix}{name} {help_text}\n# TYPE {prefix}{name} {kind}\n"

    def sample(name: str, value: float, extra: str = "") -> str:
        joined = ",".join(part for part in (labels, extra) if part)
        label_part = f"{{{joined}}}" if joined else ""
        return f"{prefix}{name}{label_part} {_number(value)}\n"

    yield family("jobs_scheduled_total", "counter", "Jobs handed to the runner.")
    yield sample("jobs_scheduled_total", stats.scheduled)
    yield family("jobs_waiting", "gauge", "Jobs waiting for a worker.")
    yield sample("jobs_waiting", stats.waiting)
    yield family("jobs_running", "gauge", "Jobs running now.")
    yield sample("jobs_running", stats.running)
    yield family("jobs_finished_total", "counter", "Jobs that ended, by outcome.")
    for outcome in ("succeeded", "failed", "timed_out", "cancelled"):
        yield sample("jobs_finished_total", getattr(stats, outcome), f'outcome="{outcome}"')
    yield family("jobs_skipped_total", "counter", "Jobs whose `when` did not match the response.")
    yield sample("jobs_skipped_total", stats.skipped)
    for name, latency, help_text in (
        ("job_wait_seconds", stats.wait, "From the response's final send to the job's start."),
        ("job_duration_seconds", stats.duration, "How long jobs ran."),
    ):
        yield family(name, "summary", f"{help_text} Quantiles over the last jobs.")
        for quantile, value in (("0.5", latency.p50), ("0.99", latency.p99)):
            yield sample(name, math.nan if value is None else value, f'quantile="{quantile}"')
        yield sample(f"{name}_sum", latency.sum)
        yield sample(f"{name}_count", latency.count)
        yield family(f"{name}_max", "gauge", f"{help_text} The longest so far.")
        yield sample(f"{name}_max", latency.max)


def _label_text(labels: Mapping[str, str]) -> str:
    for name in labels:
        if not _LABEL_NAME.fullmatch(name) or name in ("quantile", "outcome"):
            msg = (
                f"render_prometheus() got the label name {name!r}. Use letters, digits and "
                "underscores, not starting with a digit, and not 'quantile' or 'outcome'."
            )
            raise InvalidOptionError(msg)
    return ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    return repr(value)
