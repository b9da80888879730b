"""Run the benchmarks and print one table: ``python -m benchmarks [--quick] [--only ...]``."""

from __future__ import annotations

import argparse
import asyncio
from importlib.metadata import version
import os
import platform
import sys

from . import durable, inprocess, instructions, latency, memory, served
from .report import Report

SECTIONS = ("inprocess", "instructions", "latency", "served", "durable", "memory")


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    versions = ", ".join(f"{name} {version(name)}" for name in ("quart", "hypercorn", "anyio"))
    return f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}; {versions}"


async def main(arguments: argparse.Namespace) -> Report:
    report = Report()
    if "inprocess" in arguments.only:
        await inprocess.run(report, requests=arguments.requests, rounds=arguments.rounds)
    if "instructions" in arguments.only:
        await instructions.run(report)
    if "latency" in arguments.only:
        await latency.run(report, rounds=arguments.rounds)
    if "served" in arguments.only:
        await served.run(report, rounds=arguments.rounds, requests=arguments.served_requests)
    if "durable" in arguments.only:
        await durable.run(report, rounds=arguments.rounds, requests=arguments.served_requests)
    if "memory" in arguments.only:
        await memory.run(report, requests=arguments.memory_requests)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--quick", action="store_true", help="fewer requests and rounds, for a smoke run"
    )
    parser.add_argument("--requests", type=int, default=3000, help="requests per in-process run")
    parser.add_argument("--rounds", type=int, default=7, help="A B A B rounds per comparison")
    parser.add_argument("--served-requests", type=int, default=5000, help="requests per load round")
    parser.add_argument("--memory-requests", type=int, default=100_000, help="callbacks held")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds, args.served_requests, args.memory_requests = 500, 3, 1000, 5000
    print(f"Machine: {machine()}", file=sys.stderr)
    result = asyncio.run(main(args))
    print(f"\nMachine: {machine()}\nCommand: python -m benchmarks {' '.join(sys.argv[1:])}\n")
    print(result.render())
