"""What must hold of the code itself, checked on every run: lint and types (tests included)."""

from __future__ import annotations

import subprocess
import sys

from tests.workers import ROOT

#: Everything that is Python in the project.
SOURCES = ["eventbus", "tests", "bench", "run_dev.py", "bootstrap.py", "setup.py"]


def check(*command: str) -> None:
    result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-5000:]}{result.stderr[-2000:]}"


def test_ruff_finds_nothing() -> None:
    check("ruff", "check", *SOURCES)


def test_mypy_finds_nothing() -> None:
    check("mypy", "--cache-dir", str(ROOT / ".mypy_cache"), *SOURCES)
