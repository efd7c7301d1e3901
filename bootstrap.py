#!/usr/bin/env python3
"""The project's virtual environment, made and kept up to date by README's two commands.

    python3 bootstrap.py [EXTRA ...]     # prints the path of the environment's python

``run_dev.py`` and ``run_tests`` never install into the interpreter that runs
them: Debian's own ``/usr/bin/python3`` refuses that (PEP 668, "externally
managed"), and a system interpreter is no place for a project's packages
anyway. They make ``.venv/`` with that interpreter instead, install the
project into it (editable, with the extras they need) and run inside it.

The environment is reused while it is up to date: a stamp file in it records
the interpreter it was made with, a hash of the files that declare the
dependencies, and the extras installed; anything else is a reinstall. As
root, a missing ``venv`` module (Debian's ``python3-venv``) is installed with
apt-get. Standard library only: this runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
#: The files whose content decides what is installed; a change to one means pip runs again.
DECLARATIONS = ("setup.py", "pyproject.toml")
STAMP = VENV / "eventbus-stamp.json"


def venv_python() -> Path:
    return VENV / "bin" / "python"


def inside_venv() -> bool:
    """Whether this interpreter is the project environment's."""
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure(extras: list[str]) -> Path:
    """The environment's python, with the project and ``extras`` installed and up to date."""
    wanted = {"python": os.path.realpath(sys.executable), "declarations": _declarations_hash()}
    stamp = _read_stamp()
    up_to_date = venv_python().exists() and all(stamp.get(k) == v for k, v in wanted.items())
    if up_to_date and set(extras) <= set(stamp.get("extras", [])):
        return venv_python()
    if not venv_python().exists() or stamp.get("python") != wanted["python"]:
        _create()
        stamp = {}
    installed = sorted(set(extras) | set(stamp.get("extras", [])) if up_to_date else set(extras))
    target = f"{ROOT}[{','.join(installed)}]" if installed else str(ROOT)
    _say(f"installing eventbus and its dependencies into {VENV} (pip install -e '{target}')")
    subprocess.check_call([str(venv_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "-e", target])
    STAMP.write_text(json.dumps({**wanted, "extras": installed}))
    return venv_python()


def _create() -> None:
    if not _has_venv_module():
        if os.geteuid() != 0:
            sys.exit("bootstrap: Python's venv module is missing: sudo apt-get install -y python3-venv")
        _say("installing python3-venv with apt-get")
        subprocess.check_call(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
        subprocess.check_call(["apt-get", "install", "-y", "-q", "python3-venv"], stdout=subprocess.DEVNULL,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    _say(f"creating the virtual environment {VENV} with {sys.executable}")
    subprocess.check_call([sys.executable, "-m", "venv", "--clear", str(VENV)])


def _has_venv_module() -> bool:
    # Debian ships venv without ensurepip unless python3-venv is installed; both are needed.
    probe = subprocess.run([sys.executable, "-c", "import venv, ensurepip"], capture_output=True)
    return probe.returncode == 0


def _declarations_hash() -> str:
    digest = hashlib.sha256()
    for name in DECLARATIONS:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _read_stamp() -> dict[str, Any]:
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _say(line: str) -> None:
    print(f"bootstrap: {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    print(ensure(sys.argv[1:]))
