"""Benchmarks for Quart-Deferred: ``nox -s bench`` (or ``python -m benchmarks``)."""
