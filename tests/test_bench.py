"""The bench runner runs (figures are not checked: speed is measured by benchmarks, not tests)."""

from __future__ import annotations

import subprocess
import sys

from eventbus.settings import Settings
from tests.workers import ROOT, cli_env


def test_quick_publish_benchmark_prints_its_table(settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--amqp-url", settings.amqp_url, "publish"],
        cwd=ROOT, env=cli_env(settings), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "raw pika basic_publish" in result.stdout
    assert "queue_json_publish_many" in result.stdout
    assert "baseline" in result.stdout
