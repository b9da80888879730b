"""``quart deferred ...``: look into the journal, retry dead jobs, purge old ones."""

from __future__ import annotations

import time

import click
from quart.cli import ScriptInfo

from ._durable import open_journal
from ._journal import Journal
from .exceptions import InvalidOptionError

# A plain group: the commands read the app's config, and need no app context.
cli = click.Group("deferred", help="Durable tasks in the journal (QUART_DEFERRED_JOURNAL).")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _journal() -> Journal:
    app = click.get_current_context().ensure_object(ScriptInfo).load_app()
    url = app.config.get("QUART_DEFERRED_JOURNAL")
    if url is None:
        raise click.ClickException(
            "This app has no journal: set QUART_DEFERRED_JOURNAL (or QuartDeferred(journal=...))."
        )
    try:
        return open_journal(url, app.config.get("QUART_DEFERRED_JOURNAL_SYNC", "normal"))
    except InvalidOptionError as error:
        raise click.ClickException(str(error)) from None


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _seconds(text: str) -> float:
    """``30s``, ``15m``, ``12h``, ``7d`` (or a bare number of seconds) as seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an age such as 30s, 15m, 12h or 7d.") from None
    if not value >= 0:
        raise click.BadParameter(f"{text!r} is not an age such as 30s, 15m, 12h or 7d.")
    return value


@cli.command("list")
@click.argument("state", type=click.Choice(["waiting", "dead", "done"]), default="waiting")
@click.option("--limit", default=100, show_default=True, help="Show at most this many.")
def list_jobs(state: str, limit: int) -> None:
    """List the jobs in STATE (waiting, dead or done), oldest first."""
    journal = _journal()
    counts = journal.counts()
    now = time.time()
    click.echo(" ".join(f"{name}={counts[name]}" for name in ("waiting", "dead", "done")))
    for record in journal.jobs(state, limit):
        holder = f" held by {record.owner}" if record.owner else ""
        error = f" last error: {record.error}" if record.error else ""
        click.echo(
            f"{record.id} {record.name} age={_age(now - record.created)} "
            f"attempts={record.attempt} for {record.origin}{holder}{error}"
        )


@cli.command("retry")
@click.argument("job_id", required=False)
@click.option("--all", "every", is_flag=True, help="Retry every dead job.")
def retry(job_id: str | None, every: bool) -> None:
    """Make a dead job (JOB_ID, or --all of them) wait again; a running app takes it soon."""
    if (job_id is None) == (not every):
        raise click.UsageError("Give one JOB_ID, or --all, not both.")
    changed = _journal().revive(job_id)
    if job_id is not None and not changed:
        raise click.ClickException(f"No dead job {job_id} in the journal.")
    click.echo(f"{changed} dead job{'s' if changed != 1 else ''} waiting again.")


@cli.command("purge")
@click.option("--older-than", "age", default="7d", show_default=True, help="30s, 15m, 12h, 7d.")
@click.option("--dead", is_flag=True, help="Purge dead jobs too, not only finished ones.")
def purge(age: str, dead: bool) -> None:
    """Delete finished jobs (and with --dead, dead ones) last changed before the given age."""
    states = ("done", "dead") if dead else ("done",)
    removed = _journal().purge(states, time.time() - _seconds(age))
    click.echo(f"Purged {removed} {' and '.join(states)} job{'s' if removed != 1 else ''}.")
