"""Recording a failure cannot fail: whatever a failing event holds, it reaches the error store and the worker goes on.

The bodies below are what a lenient JSON decoder lets through (NaN, 1e999, lone
surrogates) and what a producer may put in the reserved ``failed_tries`` key;
the events built in Python are what a processor may hand to ``fail()``. Where the
decoder refuses a body, it lands in the error store as raw bytes instead: the
assertions accept either, since both keep the event.
"""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path
from typing import Any

import pika
import pytest

from eventbus import codec
from eventbus.processors.registry import get_worker
from eventbus.processors.worker import PermanentError
from eventbus.queue import ErrorStore, MemoryBroker
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings
from tests.conftest import wait_for, worker_threads
from tests.workers import WorkerProcess

#: Five megabytes of padding: a big event must be stored whole, not cut or dropped.
BIG = "x" * (5 << 20)

#: Bodies of events that fail in the ``test`` processor ("raise": true), each holding something that breaks
#: re-encoding or the count of tries, keyed by a marker that finds them in the error store.
POISON_BODIES = {
    "nan": b'{"id": "p-nan", "raise": true, "x": NaN}',
    "inf": b'{"id": "p-inf", "raise": true, "x": 1e999}',
    "minus-inf": b'{"id": "p-minus-inf", "raise": true, "x": -Infinity}',
    "surrogate": b'{"id": "p-surrogate", "raise": true, "x": "\\ud800"}',
    "surrogate-key": b'{"id": "p-surrogate-key", "raise": true, "\\udc00": 1}',
    "tries-text": b'{"id": "p-tries-text", "raise": true, "failed_tries": "x"}',
    "tries-inf": b'{"id": "p-tries-inf", "raise": true, "failed_tries": 1e999}',
    "tries-nan": b'{"id": "p-tries-nan", "raise": true, "failed_tries": NaN}',
    "tries-huge": b'{"id": "p-tries-huge", "raise": true, "failed_tries": 1' + b"0" * 400 + b"}",
    "tries-negative": b'{"id": "p-tries-negative", "raise": true, "failed_tries": -1000000000000}',
    "tries-bool": b'{"id": "p-tries-bool", "raise": true, "failed_tries": true}',
    "tries-object": b'{"id": "p-tries-object", "raise": true, "failed_tries": {"n": 1}}',
    "nested": b'{"id": "p-nested", "raise": true, "x": ' + b"[" * 500 + b"]" * 500 + b"}",
    "big": codec.encode({"id": "p-big", "raise": True, "pad": BIG}),
}


@pytest.fixture
def memory(event_broker: MemoryBroker) -> MemoryBroker:
    """The in-process broker, as the process's broker."""
    return event_broker


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def holds(entry: dict[str, Any], marker: str) -> bool:
    """Whether an error store entry keeps the event marked ``marker``, as JSON, as its repr or as raw bytes."""
    kept = entry.get("raw") or entry.get("event_repr") or json.dumps(entry.get("event"))
    if "raw_base64" in entry:
        kept = base64.b64decode(entry["raw_base64"]).decode("utf-8", "replace")
    return f"p-{marker}" in kept


# -- in-process, on the memory broker ---------------------------------------------------


def test_poisoned_events_reach_the_error_store_and_the_good_ones_flow(memory: MemoryBroker) -> None:
    # Given a worker of the test queue, and failing events that hold what an encoder refuses, between good ones
    with worker_threads(memory) as start:
        threads = start("test")
        for n, body in enumerate(POISON_BODIES.values()):
            memory.publish_bodies("test", [body, codec.encode({"id": n})])
        # When they have all been processed, retried and given up on
        memory.join("test", timeout=60)
        # Then the worker is still up, every good event was processed, and every bad one is in the error store
        assert not threads.crashed.is_set()
        assert threads.alive
    assert sorted(e["id"] for e in lines(memory.settings.test_queue_file)) == list(range(len(POISON_BODIES)))
    entries = memory.error_store.read("test")
    missing = [marker for marker in POISON_BODIES if not any(holds(e, marker) for e in entries)]
    assert missing == []
    assert len(entries) == len(POISON_BODIES)  # each once: after its last try, or at once if it cannot be retried
    [big] = [e for e in entries if holds(e, "big")]
    assert big["event"]["pad"] == BIG


def test_a_count_of_tries_that_is_no_count_earns_no_extra_tries(memory: MemoryBroker) -> None:
    with worker_threads(memory) as start:
        start("test")
        memory.publish_many("test", [{"id": "p-negative", "raise": True, "failed_tries": -10**12},
                                     {"id": "p-huge", "raise": True, "failed_tries": 10**400}])
        memory.join("test", timeout=30)
    [negative] = [e for e in memory.error_store.read("test") if holds(e, "negative")]
    [huge] = [e for e in memory.error_store.read("test") if holds(e, "huge")]
    assert negative["tries"] == 3  # the test queue's three tries, not a trillion more
    # Stored at once: past its last try already (or, should the decoder refuse such a number, undecodable).
    assert huge["tries"] in (4, 0)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


class Opaque:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("error", [ValueError("bad \ud800 value"), Unprintable(), PermanentError("refused")])
def test_fail_records_events_a_processor_built_whatever_they_hold(memory: MemoryBroker,
                                                                  error: Exception) -> None:
    # Given events built in Python, which never went through a decoder
    events: list[dict[str, Any]] = [
        {"id": "p-nan", "x": float("nan")},
        {"id": "p-surrogate-key", "\ud800": 1},
        {"id": "p-deep", "x": deep(5000)},
        {"id": "p-object", "x": Opaque()},
        {"id": "p-tries", "failed_tries": "x", "y": float("inf")},
        {"id": "p-fine", "failed_tries": 2},  # past its last try: stored as JSON
    ]
    worker = get_worker("test", memory)
    # When a processor fails them
    worker.fail(events, error)
    # Then nothing raised, and every one is in the error store at once (none can be retried), readable
    entries = memory.error_store.read("test")
    markers = ["nan", "surrogate-key", "deep", "object", "tries", "fine"]
    assert [m for m in markers if not any(holds(e, m) for e in entries)] == []
    assert len(entries) == len(events)
    assert all(e["error"].startswith(type(error).__name__) for e in entries)
    assert [e["event"] for e in entries if "event" in e] == [{"id": "p-fine"}]


def test_raw_bodies_are_kept_byte_for_byte(tmp_path: Path) -> None:
    store = ErrorStore(tmp_path)
    store.record("q", raw=b"\xff\xfe not UTF-8", error="body is not valid JSON")
    store.record("q", raw=b"{not json", error="body is not valid JSON")
    first, second = store.read("q")
    assert base64.b64decode(first["raw_base64"]) == b"\xff\xfe not UTF-8"
    assert second["raw"] == "{not json"


def test_taking_entries_keeps_lines_it_cannot_read(tmp_path: Path) -> None:
    store = ErrorStore(tmp_path)
    store.record("q", {"n": 1}, error="e1")
    with open(store.path("q"), "ab") as f:
        f.write(b"{torn line\n")
    store.record("q", {"n": 2}, error="e2")
    assert store.take("q", lambda entries: [e for e in entries if e["event"]["n"] == 2]) == 1
    assert store.path("q").read_bytes().splitlines()[0] == b"{torn line"
    assert [e["event"] for e in store.read("q")] == [{"n": 2}]


# -- worker processes against RabbitMQ --------------------------------------------------


@pytest.fixture
def fresh_test_queue(broker: RabbitMQBroker) -> RabbitMQBroker:
    if broker.queue_info("test").exists:
        broker.purge("test")
    return broker


def test_a_poisoned_event_does_not_wedge_a_worker_process(settings: Settings,
                                                          fresh_test_queue: RabbitMQBroker) -> None:
    # Given a worker process, and a poisoned event (NaN, a lone surrogate, failed_tries "x") before good ones
    worker = WorkerProcess(settings, "--queue=test")
    try:
        connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
        channel = connection.channel()
        channel.queue_declare("test", durable=True)
        for body in (POISON_BODIES["nan"], POISON_BODIES["surrogate"], POISON_BODIES["tries-text"]):
            channel.basic_publish("", "test", body)
        connection.close()
        fresh_test_queue.publish_many("test", [{"id": "after-1"}, {"id": "after-2"}])
        # Then the good events are processed, the bad ones are stored, and the process is still up
        wait_for(lambda: len(lines(settings.test_queue_file)) == 2, timeout=30, what="the events after the poison")
        wait_for(lambda: fresh_test_queue.error_store.count("test") == 3, timeout=30, what="three stored events")
        assert worker.process.poll() is None, worker.log
        entries = fresh_test_queue.error_store.read("test")
        assert all(any(holds(e, m) for e in entries) for m in ("nan", "surrogate", "tries-text"))
        wait_for(lambda: fresh_test_queue.queue_info("test").depth == 0, what="an empty queue")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.log
    finally:
        worker.stop()


def test_a_crashed_worker_exits_1_and_logs_the_traceback(settings: Settings) -> None:
    # Given a processor whose start raises a ValueError (which the command line once took for a usage error)
    worker = WorkerProcess(settings, "--queue=test_flaky", EVENTBUS_TEST_CRASH="test_flaky")
    try:
        # Then the process exits 1, saying which worker crashed, with the traceback at CRITICAL
        assert worker.wait(30) == 1, worker.log
        log = worker.log
        assert "CRITICAL eventbus.processors.runner: worker for queue test_flaky crashed" in log
        assert "Traceback (most recent call last)" in log
        assert "ValueError: test_flaky asked to crash" in log
        assert "error:" not in log  # not the one-line usage error
    finally:
        worker.stop()
