"""Worker processes against a real RabbitMQ: delivery, crashes, signals, timeouts, heartbeats."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from eventbus.processors.stats import read_stats
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings
from tests.conftest import wait_for
from tests.workers import WorkerProcess


@pytest.fixture
def workers(settings: Settings) -> Iterator[Any]:
    """Start worker processes; any still running at the end is killed."""
    started: list[WorkerProcess] = []

    def start(*args: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(settings, *args, **env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def fresh(broker: RabbitMQBroker) -> Iterator[RabbitMQBroker]:
    """The broker, with the shared test queues emptied first (they outlive a test)."""
    queues = ["test", "test_batch", "test_slow", "test_async", "test_flaky"]
    for queue in queues:
        if broker.queue_info(queue).exists:
            broker.purge(queue)
    yield broker


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_one_at_a_time_round_trip_and_clean_exit(settings: Settings, fresh: RabbitMQBroker, workers: Any) -> None:
    worker = workers("--queue=test")
    fresh.publish_many("test", [{"id": n} for n in range(20)])
    wait_for(lambda: len(lines(settings.test_queue_file)) == 20, timeout=30, what="20 events processed")
    assert [e["id"] for e in lines(settings.test_queue_file)] == list(range(20))
    wait_for(lambda: (read_stats(settings.var_dir, "test") or {}).get("processed") == 20, what="stats")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.log
    assert fresh.queue_info("test").depth == 0


def test_batch_worker_round_trip(settings: Settings, fresh: RabbitMQBroker, workers: Any) -> None:
    worker = workers("--queue_name=test_batch")
    fresh.publish_many("test_batch", [{"id": n} for n in range(35)])
    path = settings.var_dir / "test_batch.jsonl"
    wait_for(lambda: sum(len(b["ids"]) for b in lines(path)) == 35, timeout=30, what="35 events")
    batches = [b["ids"] for b in lines(path)]
    assert sorted(i for ids in batches for i in ids) == list(range(35))
    assert all(1 <= len(ids) <= 10 for ids in batches)
    worker.signal(signal.SIGINT)
    assert worker.wait() == 0, worker.log


def start_held_batch(settings: Settings, broker: RabbitMQBroker, workers: Any, hold: float,
                     *args: str) -> WorkerProcess:
    """A test_batch worker in the middle of a batch of ten events that takes it ``hold`` seconds."""
    worker = workers("--queue=test_batch", *args)
    events: list[dict[str, Any]] = [{"id": n} for n in range(10)]
    events[0]["hold"] = hold
    broker.publish_many("test_batch", events)
    wait_for(lambda: lines(settings.var_dir / "test_batch_started.jsonl"), timeout=30, what="the batch to start")
    return worker


def test_kill_9_in_the_middle_of_a_batch_loses_nothing(settings: Settings, fresh: RabbitMQBroker,
                                                       workers: Any) -> None:
    first = start_held_batch(settings, fresh, workers, 60, "--worker_num=0")  # only worker 0 holds
    first.kill()
    assert lines(settings.var_dir / "test_batch.jsonl") == []
    workers("--queue=test_batch", "--worker_num=1")
    path = settings.var_dir / "test_batch.jsonl"
    wait_for(lambda: sum(len(b["ids"]) for b in lines(path)) == 10, timeout=30, what="redelivery to worker 1")
    assert sorted(i for b in lines(path) for i in b["ids"]) == list(range(10))
    assert {b["worker"] for b in lines(path)} == {1}


def test_sigterm_finishes_the_batch_then_exits_0(settings: Settings, fresh: RabbitMQBroker, workers: Any) -> None:
    worker = start_held_batch(settings, fresh, workers, 1.5)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log
    [batch] = lines(settings.var_dir / "test_batch.jsonl")
    assert sorted(batch["ids"]) == list(range(10))
    assert fresh.queue_info("test_batch").depth == 0


def test_second_signal_exits_at_once_and_the_batch_goes_back(settings: Settings, fresh: RabbitMQBroker,
                                                             workers: Any) -> None:
    worker = start_held_batch(settings, fresh, workers, 60)
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "finishing the current batch" in worker.log, what="the first signal to be handled")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) != 0
    wait_for(lambda: fresh.queue_info("test_batch").depth == 10, what="the batch back in the queue")


def test_main_thread_timeout_interrupts_a_blocking_call(settings: Settings, fresh: RabbitMQBroker,
                                                        workers: Any) -> None:
    workers("--queue=test_slow")
    fresh.publish_many("test_slow", [{"id": "slow", "sleep": 30}, {"id": "quick"}])
    wait_for(lambda: lines(settings.var_dir / "test_slow.jsonl"), timeout=10, what="the quick event")
    [entry] = fresh.error_store.read("test_slow")
    assert entry["event"]["id"] == "slow"
    assert entry["error"] == "ProcessingTimeout: took longer than 0.5 s"


def test_asyncio_processor_timeout_in_a_worker_process(settings: Settings, fresh: RabbitMQBroker,
                                                       workers: Any) -> None:
    workers("--queue=test_async")
    fresh.publish_many("test_async", [{"id": "slow", "sleep": 30}, {"id": "quick"}])
    wait_for(lambda: lines(settings.var_dir / "test_async.jsonl"), timeout=10, what="the quick event")
    [entry] = fresh.error_store.read("test_async")
    assert entry["error"] == "ProcessingTimeout: took longer than 0.5 s"


def test_bad_json_goes_to_the_error_store_and_the_worker_goes_on(settings: Settings, fresh: RabbitMQBroker,
                                                                 workers: Any) -> None:
    workers("--queue=test")
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    connection.channel().basic_publish("", "test", b"\x00garbage")
    connection.close()
    fresh.publish("test", {"id": "after"})
    wait_for(lambda: lines(settings.test_queue_file), timeout=30, what="the event after the garbage")
    [entry] = fresh.error_store.read("test")
    assert entry["raw"] == "\x00garbage"


def test_all_runs_every_queue_and_a_crash_brings_the_process_down(settings: Settings, fresh: RabbitMQBroker,
                                                                  workers: Any) -> None:
    everything = workers("--all")
    for queue in ("test", "test_batch"):
        fresh.publish(queue, {"id": queue})
    wait_for(lambda: lines(settings.test_queue_file) and lines(settings.var_dir / "test_batch.jsonl"),
             timeout=30, what="both queues processed")
    everything.signal(signal.SIGTERM)
    assert everything.wait(30) == 0, everything.log

    crashing = workers("--all", EVENTBUS_TEST_CRASH="test_flaky")
    assert crashing.wait(30) == 1
    assert "test_flaky asked to crash" in crashing.log
