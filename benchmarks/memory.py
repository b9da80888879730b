"""Memory: what a waiting callback costs, and that it is all given back."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import tracemalloc

from quart import Quart

from quart_deferred import after_this_response, QuartDeferred

from .asgi import drive
from .report import Report


async def run(report: Report, *, requests: int) -> None:
    release = asyncio.Event()

    ours = Quart("memory")
    ours.config["QUART_DEFERRED_MAX_CONCURRENCY"] = 100
    deferred = QuartDeferred(ours)

    @ours.get("/")
    async def held() -> str:
        after_this_response(release.wait)
        return "ok"

    theirs = Quart("memory_background_task")

    @theirs.get("/")
    async def held_task() -> str:
        theirs.add_background_task(release.wait)
        return "ok"

    # The request itself, held the way both keep it: its context, which the
    # post-response work (and Quart's background task) keeps alive.
    reference = Quart("memory_request_only")
    held_contexts: list[contextvars.Context] = []

    @reference.get("/")
    async def held_context() -> str:
        held_contexts.append(contextvars.copy_context())
        return "ok"

    await drive(ours, 200, 10)  # Warm up both, then let everything finish.
    await drive(theirs, 200, 10)
    release.set()
    await deferred.join()
    await asyncio.gather(*theirs.background_tasks)
    release.clear()

    tracemalloc.start()
    try:
        start = _traced()
        cycles = []
        for cycle in range(2):
            before = _traced()
            await drive(ours, requests, 100)
            held_bytes = _traced() - before
            release.set()
            await deferred.join()
            release.clear()
            cycles.append((held_bytes, _traced() - start))
            print(f"  memory: ours, cycle {cycle + 1}/2", file=sys.stderr)
        before = _traced()
        await drive(theirs, requests, 100)
        their_bytes = _traced() - before
        release.set()
        await asyncio.gather(*theirs.background_tasks)
        print("  memory: add_background_task", file=sys.stderr)
        await drive(reference, 200, 10)
        held_contexts.clear()
        before = _traced()
        await drive(reference, requests, 100)
        request_bytes = _traced() - before
        held_contexts.clear()
    finally:
        tracemalloc.stop()

    ours_each = cycles[0][0] / requests
    theirs_each = their_bytes / requests
    request_each = request_bytes / requests
    report.add("memory", "the request's own context, held (both keep it)", f"{request_each:,.0f} B")
    report.add("memory", "add_background_task, per pending task", f"{theirs_each:,.0f} B")
    report.add(
        "memory",
        f"per waiting callback ({requests:,} held, 100 running)",
        f"{ours_each:,.0f} B (x{ours_each / theirs_each:.2f} of add_background_task)",
        "≤ x0.7",
        ours_each <= 0.7 * theirs_each,
    )
    report.add(
        "memory",
        "the same, beyond the request's own context",
        f"ours {ours_each - request_each:,.0f} B vs a task's {theirs_each - request_each:,.0f} B "
        f"(x{(ours_each - request_each) / (theirs_each - request_each):.2f})",
    )
    after_first, after_second = cycles[0][1], cycles[1][1]
    report.add(
        "memory",
        "after join() + gc, vs the start",
        f"{after_first / 1024:+,.0f} KiB",
        "within 1 MiB",
        abs(after_first) <= 1024 * 1024,
    )
    growth = after_second - after_first
    report.add(
        "memory",
        "growth over a second identical cycle",
        f"{growth / 1024:+,.0f} KiB",
        "~0 (within 64 KiB)",
        abs(growth) <= 64 * 1024,
    )


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]
