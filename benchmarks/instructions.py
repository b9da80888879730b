"""Instructions per request, counted by valgrind's callgrind: the same on every run.

Timings on a shared 2-core machine drift by several per cent; instruction counts do
not. Each variant is run for N and 3N requests and the difference divided by 2N,
which leaves out start-up. Instructions are not time, but on one machine and one
build they track it closely enough to say where the microseconds go.

The hash seed is fixed: with a random one, string hashes (and so dictionary
collisions) change from run to run, and the counts moved by several thousand
per request; with ``PYTHONHASHSEED=0`` a run repeats to the instruction.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys

from .asgi import drive
from .inprocess import VARIANTS
from .report import Report


def count(name: str, requests: int) -> int:
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        + [sys.executable, "-m", "benchmarks.instructions", name, str(requests)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if match is None:
        raise RuntimeError(f"callgrind printed no count:\n{result.stderr}")
    return int(match.group(1))


def run(report: Report, *, requests: int = 500) -> None:
    if shutil.which("valgrind") is None:
        report.add(
            "instructions", "skipped", "valgrind is not installed (apt-get install valgrind)"
        )
        return
    per_request: dict[str, float] = {}
    for name, _ in VARIANTS:
        if "again" in name:
            continue
        per_request[name] = (count(name, 3 * requests) - count(name, requests)) / (2 * requests)
        print(f"  instructions: {name}", file=sys.stderr)
    bare = per_request["bare Quart"]
    for name, value in per_request.items():
        extra = (
            ""
            if name == "bare Quart"
            else f", {value - bare:+,.0f} ({(value / bare - 1) * 100:+.1f}%)"
        )
        report.add("instructions", name, f"{value:,.0f} per request{extra}")


async def _drive_variant(name: str, requests: int) -> None:
    app, drain = dict(VARIANTS)[name]()
    await drive(app, 50, 10)  # Warm up: the runner, the caches.
    await drain()
    # As the in-process benchmark does: otherwise one full collection over every
    # module and app (tens of millions of instructions) lands inside N or 3N
    # requests or not, and moves the per-request figure by tens of thousands.
    gc.collect()
    gc.freeze()
    await drive(app, requests, 10)
    await drain()


if __name__ == "__main__":  # One measured run, under valgrind: NAME REQUESTS.
    asyncio.run(_drive_variant(sys.argv[1], int(sys.argv[2])))
