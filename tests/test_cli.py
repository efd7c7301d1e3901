"""The ``eventbus`` command line, run as operators run it, against a real RabbitMQ."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from eventbus.processors.registry import registered_queues
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings
from tests.conftest import wait_for
from tests.workers import WorkerProcess, run_cli

SUBCOMMANDS = ["process_queue", "purge_queue", "list_queues", "check_queue", "check_consumers",
               "supervisor_conf", "replay_errors", "rabbitmq"]


def write_stats(settings: Settings, queue: str, average: float, age: float = 0.0) -> None:
    path = Path(settings.var_dir) / "queue_stats" / f"{queue}.stats"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"update_time": time.time() - age, "recent_average_consume_time": average,
                                "queue_last_emptied_timestamp": None, "consumed_since_last_emptied": 0,
                                "processed": 1, "failed": 0}))


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(settings: Settings, command: str) -> None:
    result = run_cli(settings, command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: eventbus {command}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["process_queue"], "one of the arguments --queue/--queue_name --all is required"),
        (["process_queue", "--queue=nope"], "no processor for queue 'nope'"),
        (["process_queue", "--queue=test", "--worker_num=x"], "invalid int value: 'x'"),
        (["purge_queue", "../etc"], "invalid queue name '../etc'"),
        (["check_queue", "--queue=nope"], "no processor for queue 'nope'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(settings: Settings, args: list[str], message: str) -> None:
    result = run_cli(settings, *args)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert message in line


def test_purge_queue_says_how_many(settings: Settings, broker: RabbitMQBroker) -> None:
    broker.publish_many("noop", [{"n": n} for n in range(17)])
    result = run_cli(settings, "purge_queue", "noop")
    assert (result.returncode, result.stdout.strip()) == (0, "purged 17 event(s) from noop")
    assert broker.queue_info("noop").depth == 0
    missing = run_cli(settings, "purge_queue", "no_such_queue")
    assert missing.returncode == 1
    assert "no queue named 'no_such_queue'" in missing.stderr


def test_list_queues_shows_depth_consumers_and_backlog(settings: Settings, broker: RabbitMQBroker) -> None:
    broker.purge("noop_batch") if broker.queue_info("noop_batch").exists else None
    broker.publish_many("noop_batch", [{"n": n} for n in range(40)])
    write_stats(settings, "noop_batch", average=0.5)
    table = run_cli(settings, "list_queues")
    assert table.returncode == 0
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("noop_batch "))
    assert row[1:3] == ["40", "0"]
    assert "500.0 ms" in " ".join(row) and "20.0 s" in " ".join(row)
    as_json = {q["name"]: q for q in json.loads(run_cli(settings, "list_queues", "--json").stdout)}
    assert as_json["noop_batch"]["backlog_seconds"] == 20.0
    assert set(as_json) == set(registered_queues())
    broker.purge("noop_batch")


def test_check_queue_follows_nagios_conventions(settings: Settings, broker: RabbitMQBroker) -> None:
    queue = "noop_batch"
    if broker.queue_info(queue).exists:
        broker.purge(queue)
    ok = run_cli(settings, "check_queue", f"--queue={queue}")
    assert (ok.returncode, ok.stdout.strip()) == (0, "OK: 1 queues, none behind")

    broker.publish_many(queue, [{"n": n} for n in range(40)])
    write_stats(settings, queue, average=1.0)  # backlog 40 s
    warning = run_cli(settings, "check_queue", f"--queue={queue}")
    assert (warning.returncode, warning.stdout.strip()) == (1, f"WARNING: WARNING {queue} backlog 40 s")

    broker.publish_many(queue, [{"n": n} for n in range(30)])  # backlog 70 s
    critical = run_cli(settings, "check_queue", f"--queue={queue}")
    assert (critical.returncode, critical.stdout.strip()) == (2, f"CRITICAL: CRITICAL {queue} backlog 70 s")

    write_stats(settings, queue, average=0.001, age=200)  # tiny backlog, but nobody updated the stats
    stuck = run_cli(settings, "check_queue", f"--queue={queue}")
    assert stuck.returncode == 2
    assert re.search(rf"{queue} stuck \(stats 2\d\d s old, 70 events waiting\)", stuck.stdout), stuck.stdout

    unknown = run_cli(settings, "check_queue", EVENTBUS_BROKER="carrier-pigeon")
    assert unknown.returncode == 3
    assert "EVENTBUS_BROKER must be one of" in unknown.stderr
    broker.purge(queue)


def test_check_consumers_is_critical_until_every_queue_has_one(settings: Settings, broker: RabbitMQBroker) -> None:
    missing = run_cli(settings, "check_consumers")
    assert missing.returncode == 2
    assert missing.stdout.startswith("CRITICAL: no consumer for")
    worker = WorkerProcess(settings, "--all")
    try:
        wait_for(lambda: all(i.consumers for i in broker.queue_infos(registered_queues())), timeout=30,
                 what="a consumer on every queue")
        ok = run_cli(settings, "check_consumers")
        assert (ok.returncode, ok.stdout.strip()) == (0, f"OK: all {len(registered_queues())} queues have consumers")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.stop()


def test_supervisor_conf_has_a_program_per_queue_and_one_group(settings: Settings) -> None:
    result = run_cli(settings, "supervisor_conf", "--log-dir=/var/log/eb", "--user=eventbus")
    assert result.returncode == 0
    conf = result.stdout
    for queue in registered_queues():
        assert f"[program:eventbus_{queue}]" in conf
        assert f"process_queue --queue={queue} --worker_num=%(process_num)s" in conf
        assert f"stdout_logfile=/var/log/eb/{queue}.log" in conf
    programs = ",".join(f"eventbus_{q}" for q in registered_queues())
    assert f"[group:eventbus-workers]\nprograms={programs}\n" in conf
    assert "user=eventbus" in conf


def test_replay_errors_publishes_and_removes_what_it_replayed(settings: Settings, broker: RabbitMQBroker) -> None:
    if broker.queue_info("noop").exists:
        broker.purge("noop")
    broker.error_store.record("noop", {"n": 1}, error="boom", tries=3)
    broker.error_store.record("noop", raw=b"{not json", error="not JSON")
    broker.error_store.record("noop", {"n": 2}, error="boom", tries=3)
    result = run_cli(settings, "replay_errors", "noop")
    assert result.returncode == 0
    assert result.stdout.strip() == "replayed 2 event(s) to noop; 1 undecodable left in the store"
    assert broker.queue_info("noop").depth == 2
    assert [e["raw"] for e in broker.error_store.read("noop")] == ["{not json"]
    broker.purge("noop")


def test_create_stream_prints_it_with_its_email_address(settings: Settings) -> None:
    user = json.loads(run_cli(settings, "create_user", "emilia@example.com").stdout)
    result = run_cli(settings, "create_stream", "Cyprus", "--subscribers", "emilia@example.com")
    assert result.returncode == 0, result.stderr
    stream = json.loads(result.stdout)
    assert stream["name"] == "Cyprus" and stream["subscribers"] == [user["user_id"]]
    assert stream["email_address"].endswith("@streams.eventbus.localhost")
    again = json.loads(run_cli(settings, "create_stream", "Cyprus").stdout)
    assert again["stream_id"] == stream["stream_id"]  # running it again changes nothing
    unknown = run_cli(settings, "create_stream", "Rhodes", "--subscribers", "nobody@example.com")
    assert unknown.returncode == 2 and "no user with email 'nobody@example.com'" in unknown.stderr


def test_rabbitmq_node_start_status_stop(settings: Settings, tmp_path: Path) -> None:
    folder = str(tmp_path / "node")
    name = f"eventbus-cli-{os.getpid()}"
    try:
        started = run_cli(settings, "rabbitmq", "start", "--dir", folder, "--name", name, timeout=120)
        assert started.returncode == 0, started.stderr
        assert f"RabbitMQ node {name}@localhost is up: amqp://" in started.stdout
        assert run_cli(settings, "rabbitmq", "status", "--dir", folder, "--name", name).returncode == 0
    finally:
        stopped = run_cli(settings, "rabbitmq", "stop", "--dir", folder, "--name", name, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert run_cli(settings, "rabbitmq", "status", "--dir", folder, "--name", name).returncode == 3
