"""What a user installs: the sdist and the wheel, their files, and the version."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
import subprocess
import sys
import tarfile
import zipfile

import pytest
from quart import Quart

import quart_deferred
from quart_deferred import ContextError, InvalidOptionError, QuartDeferred

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_is_the_distributions() -> None:
    """__version__ matches the installed distribution's version."""
    assert quart_deferred.__version__ == version("quart-deferred")


def test_a_quart_trio_app_is_refused_with_the_reason() -> None:
    """A Quart-Trio app is refused at init, saying why."""
    from quart_trio import QuartTrio

    with pytest.raises(ContextError, match="does not support Quart-Trio apps"):
        QuartDeferred(QuartTrio(__name__))


def test_a_non_app_is_refused_at_init_app() -> None:
    """Something that is not a Quart app (app.asgi_app) is refused at init."""
    with pytest.raises(InvalidOptionError, match="is not a Quart app"):
        QuartDeferred(Quart(__name__).asgi_app)  # type: ignore[arg-type]


def test_the_sdist_ships_a_license_and_a_test_suite_that_collects(tmp_path: Path) -> None:
    """Built from this tree without isolation (hatchling is a test dependency)."""
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [sdist] = tmp_path.glob("*.tar.gz")
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert any(name.endswith("licenses/LICENSE") for name in archive.namelist())
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    [tree] = (tmp_path / "unpacked").iterdir()
    assert (tree / "LICENSE").is_file()
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert "error" not in collected.stdout.splitlines()[-1]
