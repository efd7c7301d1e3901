"""Running the ``eventbus`` command line and worker processes from tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from eventbus.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a CLI process needs to see the test's broker, var folder, database and test processors."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    env.update(
        EVENTBUS_BROKER=settings.broker,
        EVENTBUS_AMQP_URL=settings.amqp_url,
        EVENTBUS_VAR_DIR=str(settings.var_dir),
        EVENTBUS_PROCESSOR_MODULES="tests.processors",
        EVENTBUS_PUBLISH_TIMEOUT="5",
        PYTHONPATH=str(ROOT),
    )
    if settings.database_setting is not None:
        env["EVENTBUS_DATABASE"] = str(settings.database_setting)
    env.update(extra)
    return env


def run_cli(settings: Settings, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m eventbus ARGS`` to completion."""
    return subprocess.run([sys.executable, "-m", "eventbus", *args], env=cli_env(settings, **extra), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class WorkerProcess:
    """``eventbus process_queue ...`` in the background, its output in a log file."""

    def __init__(self, settings: Settings, *args: str, **extra: str) -> None:
        log_dir = Path(settings.var_dir) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"worker-{'-'.join(a.strip('-') for a in args)}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "eventbus", "process_queue", *args], env=cli_env(settings, **extra),
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
