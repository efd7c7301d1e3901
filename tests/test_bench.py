"""The bench runner runs (figures are not checked: speed is measured by benchmarks, not tests)."""

from __future__ import annotations

import subprocess
import sys

from eventbus.settings import Settings
from tests.shards import require_nginx
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


def test_quick_shards_benchmark_prints_its_table(settings: Settings) -> None:
    """One shard, two behind nginx and two reached directly all fan out and deliver (nginx from Debian)."""
    require_nginx()
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--amqp-url", settings.amqp_url, "shards"],
        cwd=ROOT, env=cli_env(settings), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for case in ("websocket, two shards behind nginx", "long-poll, nginx against direct",
                 "sustained, two shards behind nginx"):
        assert case in result.stdout


def test_quick_submission_benchmark_prints_its_table_with_the_cpu_per_message(settings: Settings) -> None:
    """Messages POSTed and sent over websockets reach every recipient, and each process's CPU time is counted
    (the broker's only for a private node: with --amqp-url it is not this run's to measure)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--amqp-url", settings.amqp_url, "submission"],
        cwd=ROOT, env=cli_env(settings), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for case in ("POST /api/v1/messages to 10 recipients", "websocket request frames to 10 recipients",
                 "POST messages, CPU per request, all processes", "POST messages, CPU per request, event server",
                 "POST messages, CPU per request, message_sender worker"):
        assert case in result.stdout
    assert "RabbitMQ node" not in result.stdout
    assert "<= 0 messages: MISSED" not in result.stdout


def test_quick_database_benchmark_runs_message_sender_on_sqlite_and_postgresql(
        settings: Settings, postgresql_server: object) -> None:
    """The database benchmark starts a PostgreSQL server of its own; every message is delivered and answered on
    both databases (a run that loses one fails). ``postgresql_server`` only makes sure PostgreSQL is installed."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--amqp-url", settings.amqp_url, "database"],
        cwd=ROOT, env=cli_env(settings), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for database in ("SQLite", "PostgreSQL"):
        for broker in ("RabbitMQ", "memory broker"):
            assert f"message_sender consume_batch, 10 recipients, {broker}, {database}" in result.stdout
