"""The in-process broker behaves as RabbitMQ does, and join() replaces sleeps."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from eventbus.queue import MemoryBroker, get_broker, queue_json_publish, set_broker
from eventbus.settings import Settings, set_settings


@pytest.fixture
def memory(tmp_path: Path) -> MemoryBroker:
    return MemoryBroker(Settings(broker="memory", var_dir=tmp_path))


def start(memory: MemoryBroker, queue: str, callback: Any, **options: Any) -> tuple[Any, threading.Thread]:
    consumer = memory.consumer(queue, callback, **options)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    return consumer, thread


def stop(consumer: Any, thread: threading.Thread) -> None:
    """Stop a consumer run by ``start``; it must end."""
    consumer.stop()
    thread.join(5)
    assert not thread.is_alive(), "the consumer did not stop within 5 s"


def test_selected_by_eventbus_broker_memory(tmp_path: Path) -> None:
    set_settings(Settings.from_env({"EVENTBUS_BROKER": "memory", "EVENTBUS_VAR_DIR": str(tmp_path)}))
    set_broker(None)
    try:
        broker = get_broker()
        assert isinstance(broker, MemoryBroker)
        queue_json_publish("memory_selected", {"n": 1})
        assert broker.queue_info("memory_selected").depth == 1
    finally:
        set_settings(None)
        set_broker(None)


def test_round_trip_and_join(memory: MemoryBroker) -> None:
    got: list[Any] = []
    consumer, thread = start(memory, "q", got.extend, batch_size=10)
    memory.publish_many("q", [{"n": n} for n in range(35)])
    memory.join("q", timeout=5)
    assert [e["n"] for e in got] == list(range(35))
    stop(consumer, thread)
    assert memory.queue_info("q").consumers == 0


def test_join_times_out_when_nobody_consumes(memory: MemoryBroker) -> None:
    memory.publish("idle", {"n": 1})
    with pytest.raises(TimeoutError, match="still holds 1 event"):
        memory.join("idle", timeout=0.05)


def test_failing_callback_requeues_in_order_and_raises(memory: MemoryBroker) -> None:
    memory.publish_many("q", [{"n": n} for n in range(3)])

    def fail(events: list[Any]) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        memory.consume("q", fail, batch_size=2)
    got: list[Any] = []
    consumer, thread = start(memory, "q", got.extend)
    memory.join("q", timeout=5)
    stop(consumer, thread)
    assert [e["n"] for e in got] == [0, 1, 2]


def test_unacked_events_return_when_the_consumer_stops(memory: MemoryBroker) -> None:
    memory.publish_many("q", [{"n": n} for n in range(5)])
    started, release = threading.Event(), threading.Event()
    done: list[Any] = []

    def slow(events: list[Any]) -> None:
        started.set()
        release.wait(5)
        done.extend(events)

    consumer, thread = start(memory, "q", slow, batch_size=2)
    assert started.wait(5)
    consumer.stop()
    release.set()
    thread.join(5)
    assert not thread.is_alive()
    assert [e["n"] for e in done] == [0, 1]
    assert memory.queue_info("q").depth == 3


def test_purge_and_queue_info(memory: MemoryBroker) -> None:
    assert memory.queue_info("nothing").exists is False
    memory.publish_many("q", [{"n": n} for n in range(4)])
    assert memory.queue_info("q").depth == 4
    assert memory.purge("q") == 4
    assert memory.queue_info("q").depth == 0


def test_undecodable_body_goes_to_the_error_store(memory: MemoryBroker) -> None:
    memory.publish_bodies("q", [b"\xff\xfe", b'{"n": 1}'])
    got: list[Any] = []
    consumer, thread = start(memory, "q", got.extend)
    memory.join("q", timeout=5)
    stop(consumer, thread)
    assert got == [{"n": 1}]
    [entry] = memory.error_store.read("q")
    assert "not valid JSON" in entry["error"]
