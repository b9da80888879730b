"""Throughput and CPU per request in-process: A B A B rounds, medians of per-round ratios."""

from __future__ import annotations

from collections.abc import Callable
import gc
import sys
import time

from . import apps
from .asgi import ASGIApp, drive
from .report import median, Report

Variant = tuple[str, Callable[[], tuple[ASGIApp, apps.Drain]]]

VARIANTS: list[Variant] = [
    ("bare Quart", apps.bare),
    ("bare Quart again (A/A: the noise floor)", apps.bare),
    ("Quart sync view (one run_sync thread hop)", apps.sync_view),
    ("Quart add_background_task(noop)", apps.background_task),
    ("Quart after_this_request (native)", apps.native_after_this_request),
    ("ours: installed, unused", apps.deferred_unused),
    ("ours: one after_this_request", apps.deferred_after_this_request),
    ("ours: one after_this_response noop", apps.deferred_after_this_response),
    ("ours: one sync after_this_response", apps.deferred_sync_after_this_response),
    ("ours: one task (no journal)", apps.deferred_task),
    ("ours: one durable task (SQLite journal)", apps.deferred_durable_task),
]
# Compared with Starlette itself, not with Quart; left out where Starlette is not installed.
STARLETTE_VARIANTS: list[Variant] = [
    ("Starlette, bare", apps.starlette_bare),
    ("Starlette BackgroundTask(noop)", apps.starlette_background_task),
]


async def run(report: Report, *, requests: int, rounds: int) -> None:
    built = [(name, *factory()) for name, factory in VARIANTS]
    for concurrency in (10, 100):
        walls: dict[str, list[float]] = {name: [] for name, _, _ in built}
        cpus: dict[str, list[float]] = {name: [] for name, _, _ in built}
        for _, app, drain in built:  # Warm up: imports, caches, the first runner.
            await drive(app, 200, concurrency)
            await drain()
        # Long-lived objects out of the collector's way, as gc.freeze() after start-up
        # does in production: otherwise a full collection over all these apps lands on
        # whichever variant happens to trigger it. Young collections still count.
        gc.collect()
        gc.freeze()
        for round_ in range(rounds):
            order = built if round_ % 2 == 0 else built[::-1]  # A B B A: drift cancels out.
            for name, app, drain in order:
                gc.collect()
                wall, cpu = time.perf_counter(), time.process_time()
                await drive(app, requests, concurrency)
                await drain()  # Deferred work counts: it must not look free.
                walls[name].append(time.perf_counter() - wall)
                cpus[name].append(time.process_time() - cpu)
            print(f"  in-process c={concurrency}: round {round_ + 1}/{rounds}", file=sys.stderr)
        gc.unfreeze()
        _add_rows(report, walls, cpus, requests, concurrency)


def _add_rows(
    report: Report,
    walls: dict[str, list[float]],
    cpus: dict[str, list[float]],
    requests: int,
    concurrency: int,
) -> None:
    bare_walls, bare_cpus = walls["bare Quart"], cpus["bare Quart"]

    def ratio(name: str) -> float:
        return median([b / v for b, v in zip(bare_walls, walls[name], strict=True)])

    def extra_us(name: str) -> float:
        return median(
            [(v - b) / requests * 1e6 for b, v in zip(bare_cpus, cpus[name], strict=True)]
        )

    section = f"in-process c={concurrency}"
    for name in walls:
        rps = requests / median(walls[name])
        cpu_us = median(cpus[name]) / requests * 1e6
        measured = f"{rps:,.0f} req/s, {cpu_us:.1f} µs CPU"
        if name != "bare Quart":
            measured += f", x{ratio(name):.3f}, {extra_us(name):+.1f} µs"
        goal, ok = "", None
        if name == "ours: installed, unused":
            goal, ok = "≤ 3 µs, ≥ x0.98", extra_us(name) <= 3 and ratio(name) >= 0.98
        elif name == "ours: one after_this_request":
            native = extra_us("Quart after_this_request (native)")
            goal, ok = f"≤ native {native:+.1f} + 3 µs", extra_us(name) <= native + 3
        elif name == "ours: one after_this_response noop":
            background = extra_us("Quart add_background_task(noop)")
            goal = f"≤ 12 µs, ≥ x0.94, < add_background_task ({background:+.1f} µs)"
            ok = extra_us(name) <= 12 and ratio(name) >= 0.94 and extra_us(name) < background
        elif name == "ours: one sync after_this_response":
            hop = extra_us("Quart sync view (one run_sync thread hop)")
            goal, ok = f"≤ 80 µs (one hop here: {hop:+.1f} µs)", extra_us(name) <= 80
        report.add(section, name, measured, goal, ok)
