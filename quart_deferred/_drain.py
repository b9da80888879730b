"""The end of a runner's work: the drain at shutdown, or its loss when the loop ended first.

At shutdown (see ``AppState.drain``) the runner gets up to
``QUART_DEFERRED_SHUTDOWN_TIMEOUT`` seconds to finish what it has; then what
is still waiting is cancelled, each job logged by name, running jobs are
cancelled and get ``UNWIND`` seconds to end, jobs that ignore their
cancellation are let go of, and plain functions on threads get the rest of
that moment. A runner whose event loop ended without a drain (no lifespan,
a test's loop) is found out later, and everything it held is accounted for
as lost, by name.
"""

from __future__ import annotations

import asyncio
import logging
import time

import anyio

from .jobs import log_fields
from .runner import TaskRunner

logger = logging.getLogger("quart_deferred")

UNWIND = 0.4  # Seconds cancelled jobs and running threads get at shutdown before the exit.


async def shutdown(runner: TaskRunner, grace: float) -> None:
    """Drain *runner* for up to *grace* seconds, then cancel what is left, logging each job."""
    started = time.monotonic()
    with anyio.move_on_after(grace):
        await runner.wait_idle()
    runner.lose_waiting(f"the {grace}s shutdown timeout ran out")
    tasks = list(runner.tasks.values())
    for task in tasks:
        task.cancel()
    deadline = time.monotonic() + UNWIND
    if tasks:  # Cancelled jobs log themselves; give them a moment to unwind.
        _, alive = await asyncio.wait(tasks, timeout=UNWIND)
        for batch, task in list(runner.tasks.items()):  # Jobs that ignore their
            if task in alive and batch.watch is not None:  # cancellation: let go.
                batch.watch.abandoned = True
                task.cancel()
        if alive:
            await asyncio.wait(alive, timeout=0.1)
    if runner.pool is not None:
        # Plain functions still on their threads cannot be stopped: they were
        # logged as still running, and get the rest of the moment to finish.
        # After that they do not hold the exit (daemon threads).
        left = max(0.0, deadline - time.monotonic())
        await asyncio.to_thread(runner.pool.wait_running, left)
        runner.pool.close()
    runner.ledger.flush_unnamed()
    logger.debug(
        "Quart-Deferred drained in %.3fs",
        time.monotonic() - started,
        extra=log_fields(None, None),
    )


def lose_everything(runner: TaskRunner, why: str) -> None:
    """Account for all of *runner*'s work: its loop has ended without running it."""
    runner.lose_waiting(why)
    for batch in runner.tasks:
        if batch.watch is not None:  # A job was running.
            job = batch.jobs[batch.next - 1]
            runner.ledger.cancel_running(job, batch, f"it was running when {why}")
            if job.key is not None:
                runner.keys.release(job.key)
        runner.ledger.cancel_unstarted(batch, why)
    runner.tasks.clear()
    runner.ledger.flush_unnamed()
