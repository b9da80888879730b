"""The public call forms as mypy sees them: wrong arguments are caught in every form."""

from __future__ import annotations

from pathlib import Path
import re
import subprocess
import sys

import pytest

CALLS = Path(__file__).parent / "typing" / "calls.py"
ROOT = Path(__file__).parent.parent


def expected_errors() -> dict[int, str]:
    """The ``# E: text`` expectations of calls.py, by line number."""
    expected = {}
    for number, line in enumerate(CALLS.read_text().splitlines(), start=1):
        match = re.search(r"  # E: (.+)$", line)
        if match:
            expected[number] = match[1].strip()
    return expected


def test_mypy_reports_exactly_the_expected_errors() -> None:
    """Each documented call form type-checks, and each wrong call gets the error it should."""
    pytest.importorskip("mypy")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--hide-error-context",
            "--no-error-summary",
            "--show-error-codes",
            str(CALLS.relative_to(ROOT)),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    errors: dict[int, list[str]] = {}
    for line in result.stdout.splitlines():
        match = re.match(r".*calls\.py:(\d+): error: (.*)", line)
        if match:
            errors.setdefault(int(match[1]), []).append(match[2])
    expected = expected_errors()
    unexpected = {number: found for number, found in errors.items() if number not in expected}
    missing = {
        number: text
        for number, text in expected.items()
        if not any(text in message for message in errors.get(number, []))
    }
    assert not unexpected, f"errors where none were expected:\n{result.stdout}"
    assert not missing, f"expected errors not reported: {missing}\n{result.stdout}"
