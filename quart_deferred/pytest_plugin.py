"""The pytest plugin (entry point ``pytest11``): strict mode for post-response work.

Loaded by pytest whenever the package is installed (``-p no:quart_deferred``
turns it off), it changes nothing in a test session unless a test asks for
it: it registers one marker and one ini option, and patches nothing.

Opt-in strict mode (``@pytest.mark.quart_deferred_strict``, or
``quart_deferred_strict = true`` in the ini file) fails a test during which
post-response work failed or timed out, so a broken job cannot hide behind a
201. ``deferred.wait_for(response)`` needs no plugin (see _test_client.py).
"""

from __future__ import annotations

from collections.abc import Generator
import logging

import pytest

_STRICT = "quart_deferred_strict"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _STRICT,
        "Fail a test during which Quart-Deferred post-response work failed or timed out.",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_STRICT}: fail the test if post-response work failed or timed out during it.",
    )


class _Failures(logging.Handler):
    """Collect the ERROR lines of ``quart_deferred``: failed and timed-out work."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    if not (item.get_closest_marker(_STRICT) or item.config.getini(_STRICT)):
        return (yield)
    failures = _Failures()
    logger = logging.getLogger("quart_deferred")
    logger.addHandler(failures)
    try:
        result = yield
    finally:
        logger.removeHandler(failures)
    if failures.records:
        formatter = logging.Formatter()
        details = "\n\n".join(formatter.format(record) for record in failures.records)
        pytest.fail(
            f"{len(failures.records)} post-response job(s) failed during this test "
            f"({_STRICT}):\n\n{details}",
            pytrace=False,
        )
    return result


# Strict mode needs new-style hook wrappers (pytest 8+); on older pytest the
# plugin still loads, without it.
if int(pytest.__version__.split(".")[0]) >= 8:
    pytest_runtest_call = pytest.hookimpl(wrapper=True)(_runtest_call)
