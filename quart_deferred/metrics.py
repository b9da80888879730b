"""The figures: ``Stats`` and its live ``Counters``, latencies, and the Prometheus page.

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

from .exceptions import InvalidOptionError

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


@dataclass(frozen=True, slots=True)
class JournalCounts:
    """The records in the journal, every process's (see "Durable tasks" in the README).

    ``waiting`` (not yet run to the end, held or not), ``dead`` (their last
    attempt failed) and ``done``, until ``quart deferred purge`` removes them.
    """

    waiting: int = 0
    dead: int = 0
    done: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of what one app's runner has done; see ``QuartDeferred.stats()``."""

    scheduled: int = 0
    waiting: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    kept: int = 0  # Tasks left in the journal at shutdown, for the next start.
    skipped: int = 0
    wait: Latency = Latency()  # From the final send (or start_soon) to the job's start.
    duration: Latency = Latency()  # From the job's start to its end, whichever way.
    journal: JournalCounts | None = None  # With QUART_DEFERRED_JOURNAL: read at the snapshot.


class Keys:
    """The de-duplication keys of work waiting or running, in one app.

    Taken with :meth:`claim` when work is registered, freed with
    :meth:`release` when it ends, whichever way; a plain job frees its key
    on its own thread (one set operation, atomic under the GIL).
    """

    __slots__ = ("_taken",)

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def __contains__(self, key: object) -> bool:
        return key in self._taken

    def claim(self, key: str) -> bool:
        """Take *key*; ``False`` if it is taken already."""
        if key in self._taken:
            return False
        self._taken.add(key)
        return True

    def release(self, key: str) -> None:
        self._taken.discard(key)


class Counters:
    """The live counters behind :class:`Stats`; they outlive any one runner.

    ``held`` is not in :class:`Stats`: it counts jobs registered by requests
    whose response has not ended yet, which ``QUART_DEFERRED_MAX_PENDING``
    counts with the waiting ones.
    """

    __slots__ = (
        "cancelled",
        "duration",
        "failed",
        "held",
        "kept",
        "running",
        "scheduled",
        "skipped",
        "succeeded",
        "timed_out",
        "wait",
        "waiting",
    )

    def __init__(self) -> None:
        self.scheduled = self.waiting = self.running = self.succeeded = 0
        self.failed = self.timed_out = self.cancelled = self.kept = self.skipped = 0
        self.held = 0
        self.wait = LatencyRecorder()
        self.duration = LatencyRecorder()

    def snapshot(self) -> Stats:
        return Stats(
            self.scheduled,
            self.waiting,
            self.running,
            self.succeeded,
            self.failed,
            self.timed_out,
            self.cancelled,
            self.kept,
            self.skipped,
            self.wait.snapshot(),
            self.duration.snapshot(),
        )


def _quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def render_prometheus(stats: Stats, labels: Mapping[str, object] | None = None) -> str:
    """Render *stats* in the Prometheus text exposition format (version 0.0.4).

    Serve it from a route of your own::

        @app.get("/metrics")
        async def metrics() -> tuple[str, dict[str, str]]:
            return render_prometheus(deferred.stats()), {"Content-Type": PROMETHEUS_CONTENT_TYPE}

    Arguments:
        stats: A snapshot from ``deferred.stats()``.
        labels: Labels for every sample, e.g. ``{"app": app.name}`` when
            several apps are rendered into one page; values go through ``str()``.
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
    for outcome in ("succeeded", "failed", "timed_out", "cancelled", "kept"):
        yield sample("jobs_finished_total", getattr(stats, outcome), f'outcome="{outcome}"')
    yield family("jobs_skipped_total", "counter", "Jobs whose `when` did not match the response.")
    yield sample("jobs_skipped_total", stats.skipped)
    if stats.journal is not None:
        yield family("journal_jobs", "gauge", "Records in the durable-task journal, by state.")
        for state in ("waiting", "dead", "done"):
            yield sample("journal_jobs", getattr(stats.journal, state), f'state="{state}"')
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


def _label_text(labels: Mapping[str, object]) -> str:
    for name in labels:
        if (
            not isinstance(name, str)
            or not _LABEL_NAME.fullmatch(name)
            or name.startswith("__")
            or name in ("quantile", "outcome")
        ):
            msg = (
                f"render_prometheus() got the label name {name!r}. Use letters, digits and "
                "underscores, not starting with a digit; names starting with '__' are "
                "reserved by Prometheus, and 'quantile' and 'outcome' by this page."
            )
            raise InvalidOptionError(msg)
    return ",".join(f'{name}="{_escape(str(value))}"' for name, value in labels.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    return repr(value)
