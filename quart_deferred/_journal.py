"""The journal: where durable tasks are kept until they have run, behind a small protocol.

A record is one durable task call: its stable id, the task's registered
name, its arguments as text (JSON unless the task says otherwise), its
attempts so far and when it may next run. A record is *waiting* until its
task has succeeded (*done*) or has failed its last attempt (*dead*). A
waiting record is held by the process whose ``owner`` it names for as long
as that process renews its lease; once the lease has run out (the process
was killed, or shut down and let go), any process that knows the task takes
it over and runs it.

The store behind the protocol is SQLite (_sqlite_journal.py) for now; a
shared store (Redis Streams, Postgres) fits the same protocol without the
runner knowing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection
from dataclasses import dataclass
from typing import Protocol

from .exceptions import InvalidOptionError

STATES = ("waiting", "done", "dead")


@dataclass(slots=True)
class Record:
    """One durable task call, as the journal keeps it."""

    id: str
    name: str
    arguments: str  # The serialized (args, kwargs).
    origin: str  # Where it came from, for log lines: "POST /signup".
    created: float  # time.time()
    not_before: float  # It may run from this time on (a retry waits).
    attempt: int = 0  # Attempts that have ended so far.
    state: str = "waiting"
    owner: str | None = None
    error: str | None = None  # The last attempt's error, one line.


class Journal(Protocol):
    """What the runtime needs of a store. Writes are ordered; ``add`` is durable once awaited.

    Methods that return nothing queue their write: it reaches the store soon,
    in order, grouped with others, and a failure is logged by the store.
    """

    url: str

    def open(self) -> None:
        """Open (creating if needed) the store; raise ``JournalError`` saying what is wrong."""

    def add(self, records: Collection[Record], owner: str, lease_until: float) -> Awaitable[None]:
        """Write *records*, held by *owner*; the awaitable ends once they are on disk."""

    def finished(self, job_id: str) -> None:
        """The task of *job_id* succeeded."""

    def forget(self, job_ids: Collection[str]) -> None:
        """Remove records that will never run (their ``when`` did not match after all)."""

    def retrying(self, job_id: str, attempt: int, not_before: float, error: str) -> None:
        """An attempt failed; the next may start at *not_before*."""

    def dead(self, job_id: str, attempt: int, error: str) -> None:
        """The last attempt failed: keep the record as dead."""

    def claim(
        self,
        owner: str,
        names: Collection[str],
        now: float,
        lease_until: float,
        dead: Collection[str],
    ) -> Awaitable[list[Record]]:
        """Take the waiting records of *names* that nobody holds, or whose holder's lease ran out
        (or whose holder is one of *dead*, processes known to have ended)."""

    def others(self, names: Collection[str]) -> Awaitable[dict[str, int]]:
        """Count the waiting records of each task that is not one of *names* (unknown here)."""

    def holders(self, now: float) -> Awaitable[list[str]]:
        """Return the owners that hold waiting records with a lease not yet run out."""

    def renew(self, owner: str, lease_until: float) -> None:
        """Extend *owner*'s lease on the records it holds."""

    def release(self, owner: str) -> Awaitable[None]:
        """Let go of *owner*'s waiting records, so that the next process takes them at once."""

    def jobs(self, state: str, limit: int) -> list[Record]:
        """Return up to *limit* records in *state*, oldest first (a direct read, for the CLI)."""

    def revive(self, job_id: str | None) -> int:
        """Make the dead job *job_id* (every dead job if ``None``) wait again; return how many."""

    def expire(self, before: float, limit: int) -> Awaitable[int]:
        """Delete up to *limit* done records finished before *before*; return how many.

        A write among the others (the running app's), kept short by *limit*.
        """

    def purge(self, states: Collection[str], before: float) -> int:
        """Delete records in *states* last changed before *before*; return how many."""

    def counts(self) -> dict[str, int]:
        """Return the number of records in each state (a direct read)."""

    def close(self) -> None:
        """Write what is queued and close the store."""


class JournalError(InvalidOptionError):
    """The journal cannot be opened or written: its message says what is wrong and what to do."""
