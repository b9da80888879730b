"""Real hypercorn processes with hostile jobs: the server keeps serving and exits on time."""

from __future__ import annotations

from collections.abc import AsyncIterator
import time

import pytest

from .conftest import wait
from .servers import ServerProcess, serving

SHUTDOWN_TIMEOUT = 1.0
MARGIN = 1.0  # What the issue allows past the drain: hypercorn's close and process exit.


@pytest.fixture(name="served")
async def _served() -> AsyncIterator[ServerProcess]:
    """``tests.apps.hostile:app`` under hypercorn in a subprocess."""
    env = {"SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)}
    async with serving(
        "hypercorn", "tests.apps.hostile:app", "--graceful-timeout=1", env=env
    ) as served:
        yield served


@pytest.mark.parametrize("kind", ["system_exit", "plain_keyboard_interrupt"])
async def test_a_job_raising_systemexit_or_keyboardinterrupt_does_not_stop_the_server(
    served: ServerProcess, kind: str
) -> None:
    """A job raising SystemExit or KeyboardInterrupt fails alone; the server keeps serving and exits
    cleanly."""
    assert await served.get(f"/job/{kind}") == (200, b"ok")
    await wait(served.saw(f"{kind} for GET /job/{kind} failed"))
    assert await served.get("/health") == (200, b"ok")  # Still serving.
    took = await served.stop()
    assert served.process.returncode == 0
    assert "Cancelled" not in served.output
    assert took < SHUTDOWN_TIMEOUT + MARGIN


async def test_a_non_awaiting_chain_leaves_the_server_answering_and_sigterm_stops_it(
    served: ServerProcess,
) -> None:
    """A chain of jobs that never await leaves /health fast, and SIGTERM still stops the server."""
    assert await served.get("/job/chain") == (200, b"ok")
    await wait(served.saw("started chain"))
    slowest = 0.0
    for _ in range(20):
        began = time.monotonic()
        assert await wait(served.get("/health"), timeout=5) == (200, b"ok")
        slowest = max(slowest, time.monotonic() - began)
    took = await served.stop()
    print(f"\nchain: slowest /health {slowest * 1000:.1f} ms; exit {took:.2f}s after SIGTERM")
    assert slowest < 0.1, f"/health took {slowest:.3f}s while the chain ran"
    assert took < SHUTDOWN_TIMEOUT + MARGIN, f"exit took {took:.2f}s after SIGTERM"


@pytest.mark.parametrize(
    ("kind", "logged"),
    [
        (
            "swallows_cancellation",
            "swallows_cancellation for GET /job/swallows_cancellation "
            "ignored its cancellation at shutdown",
        ),
        (
            "blocks_forever",
            "blocks_forever for GET /job/blocks_forever is a plain function "
            "still running on its thread",
        ),
        ("sleeps_3s", "sleeps_3s for GET /job/sleeps_3s is a plain function still running"),
    ],
)
async def test_the_process_exits_on_time_whatever_the_job_does(
    served: ServerProcess, kind: str, logged: str
) -> None:
    """SIGTERM with the job still running: the exit comes within the drain plus a margin,
    and the job that is still alive is named in the log."""
    assert await served.get(f"/job/{kind}") == (200, b"ok")
    await wait(served.saw(f"started {kind}"))
    took = await served.stop()
    assert took < SHUTDOWN_TIMEOUT + MARGIN, f"exit took {took:.2f}s after SIGTERM"
    assert logged in served.output, served.output[-2000:]
    print(f"\nexit with {kind}: {took:.2f}s after SIGTERM (drain {SHUTDOWN_TIMEOUT}s)")
