"""Development sessions: ``nox`` runs lint, typecheck and tests."""

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "reliability"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite but the reliability tests; extra arguments go to pytest
    (``nox -s tests -- -k runner``)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not reliability", *session.posargs)


@nox.session
def reliability(session: nox.Session) -> None:
    """Run the long load and fault tests (about 90 s; ``RELIABILITY_REQUESTS=2000`` is quicker)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "reliability", *session.posargs)


@nox.session
def tests_oldest(session: nox.Session) -> None:
    """Run the test suite against the oldest Quart we support."""
    session.install("-e", ".[test]", "quart==0.20.*")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check formatting and lint rules with ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Run mypy --strict over the package, tests, examples and this file."""
    session.install("-e", ".[test,bench]", "mypy>=1.10", "nox")
    session.run("mypy", "quart_deferred", "tests", "examples", "benchmarks", "noxfile.py")


@nox.session
def demo(session: nox.Session) -> None:
    """Serve examples/app.py with hypercorn on http://127.0.0.1:5000."""
    session.install("-e", ".", "hypercorn>=0.17")
    session.run(
        "hypercorn",
        "--bind=127.0.0.1:5000",
        "--access-logfile=-",
        "examples.app:app",
        *session.posargs,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks and print one table (not a default session)."""
    session.install("-e", ".[test,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
