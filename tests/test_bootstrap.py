"""README's two commands on a stock Debian: Debian's own python3, a clean environment, a fresh clone.

Debian's ``/usr/bin/python3`` is externally managed (PEP 668): ``pip install``
into it is refused. Both commands must make and use the project's virtual
environment instead, and reuse it once it is up to date.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from eventbus.queue.rabbitmq_node import free_port
from tests.conftest import wait_for
from tests.workers import ROOT

DEBIAN_PYTHON = Path("/usr/bin/python3")
#: Only a minimal PATH, as `env -i` gives: no virtual environment, no pyenv, nothing of this session's.
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of the committed project, as CI and a newcomer get it."""
    if not DEBIAN_PYTHON.exists():
        pytest.fail("no /usr/bin/python3: these tests are for Debian's own interpreter", pytrace=False)
    path = tmp_path_factory.mktemp("fresh") / "eventbus"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(path)], check=True, timeout=120)
    return path


def test_run_tests_makes_the_virtual_environment_and_then_reuses_it(clone: Path) -> None:
    # Given a fresh clone and Debian's python3 first (and alone) on PATH
    # When the test command runs a few tests twice
    first = subprocess.run(["./run_tests", "-q", "tests/test_settings.py"], cwd=clone, env=CLEAN_ENV,
                           capture_output=True, text=True, timeout=900)
    second = subprocess.run(["./run_tests", "-q", "tests/test_settings.py"], cwd=clone, env=CLEAN_ENV,
                            capture_output=True, text=True, timeout=300)

    # Then both pass, the packages went into the clone's .venv, and the second run installed nothing
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "passed" in first.stdout
    stamp = json.loads((clone / ".venv" / "eventbus-stamp.json").read_text())
    assert stamp["python"] == str(DEBIAN_PYTHON.resolve())
    assert "test" in stamp["extras"]
    assert "installing" in first.stderr
    assert "installing" not in second.stderr


def test_run_dev_runs_the_system_from_the_virtual_environment(clone: Path) -> None:
    # Given a fresh clone (its .venv made by the test above, or made now)
    port = free_port()
    log = clone / "run_dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["./run_dev.py", "--memory-broker", "--port", str(port)], cwd=clone,
                                   env=CLEAN_ENV, stdout=out, stderr=subprocess.STDOUT)
    try:
        # When it starts, Then the server answers
        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/server_settings", timeout=2) as r:
                    return bool(json.loads(r.read())["result"] == "success")
            except OSError:
                return process.poll() is not None  # ended: the assertion below says why

        wait_for(answers, timeout=600, what="run_dev.py's server")
        assert process.poll() is None, log.read_text()[-3000:]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    # And it ran inside the project's environment, then stopped cleanly
    assert "using the project's virtual environment" in log.read_text()
    assert code == 0, log.read_text()[-3000:]
