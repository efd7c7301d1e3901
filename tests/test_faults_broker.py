"""Fault injection: the RabbitMQ node is killed (SIGKILL) and restarted twice while producers publish.

The node is a private one of this test's own (killing the session's would
hurt every other test). Producers publish one at a time (queue_json_publish)
and in batches (queue_json_publish_many); worker processes consume both
queues meanwhile. Every publish that returned must be processed at least
once; producers and consumers recover by themselves; duplicates are counted,
and bounded by what can be in flight when the node dies: a consumer's
prefetch window, plus a producer's unconfirmed batch.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from eventbus.errors import BrokerError
from eventbus.queue import queue_json_publish, queue_json_publish_many, set_broker
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.rabbitmq_node import RabbitMQNode
from eventbus.settings import Settings
from tests.conftest import wait_for
from tests.faults import Tally, jsonl, seeded
from tests.workers import WorkerProcess

#: How many times the node is killed.
KILLS = 2
#: Events per queue_json_publish_many call.
BATCH = 10
#: Long enough to ride out a node restart on a loaded machine: a publish that waits this long has not returned.
PUBLISH_TIMEOUT = 90.0


@pytest.fixture
def node(tmp_path: Path, rabbitmq_node: RabbitMQNode) -> Iterator[RabbitMQNode]:
    """A private node for this test alone (``rabbitmq_node`` only for its check that RabbitMQ is installed)."""
    node = RabbitMQNode(tmp_path / "rabbitmq", name=f"eventbus-faults-{os.getpid()}")
    node.start()
    yield node
    node.stop()


def kill_node(node: RabbitMQNode) -> None:
    """SIGKILL the node's Erlang VM, as a crash or the OOM killer would, and wait until it is gone."""
    pid = node.pid()
    assert pid is not None, "the node is not running"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=30, what="the node to die")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


class Producer(threading.Thread):
    """Publishes numbered events until stopped; ``returned`` holds the ids whose publish returned."""

    def __init__(self, name: str, publish: Callable[[list[str]], None], size: int) -> None:
        super().__init__(name=name, daemon=True)
        self.publish = publish
        self.size = size
        self.returned: list[str] = []
        self.failed: list[str] = []  # publishes that raised: not promised, so not counted as lost
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            ids = [f"{self.name}-{n + i}" for i in range(self.size)]
            n += self.size
            try:
                self.publish(ids)
            except BrokerError:
                self.failed.extend(ids)
            else:
                self.returned.extend(ids)


def reached(targets: dict[Producer, int]) -> bool:
    """Whether each producer has that many publishes returned."""
    return all(len(producer.returned) >= n for producer, n in targets.items())


def test_broker_killed_and_restarted_loses_no_published_event(node: RabbitMQNode, tmp_path: Path) -> None:
    rng = seeded("broker kill")
    settings = Settings(amqp_url=node.url, var_dir=tmp_path / "var", publish_timeout=PUBLISH_TIMEOUT)
    broker = RabbitMQBroker(settings)
    set_broker(broker)
    env = {"EVENTBUS_PUBLISH_TIMEOUT": str(PUBLISH_TIMEOUT)}
    workers = [WorkerProcess(settings, "--queue=test", **env), WorkerProcess(settings, "--queue=test_batch", **env)]
    single = Producer("single", lambda ids: queue_json_publish("test", {"id": ids[0]}), 1)
    batches = Producer("batch", lambda ids: queue_json_publish_many("test_batch", [{"id": i} for i in ids]),
                       BATCH)
    try:
        # Given two workers consuming, and producers publishing one at a time and in batches
        wait_for(lambda: all(i.consumers for i in broker.queue_infos(["test", "test_batch"])), timeout=60,
                 what="both workers consuming")
        broker.close()  # the producers' threads have connections of their own; this one would only go stale
        single.start()
        batches.start()

        # When the node is killed at points the generator picks, and started again, twice
        for kill in range(1, KILLS + 1):
            ahead = {p: len(p.returned) + rng.randint(50, 300) for p in (single, batches)}
            wait_for(partial(reached, ahead), timeout=120,
                     what=f"both producers publishing before kill {kill}")  # again by themselves, after kill 1
            kill_node(node)
            started = time.monotonic()
            node.start()
            print(f"kill {kill}: after {len(single.returned)} + {len(batches.returned)} returned publishes; "
                  f"the node was back in {time.monotonic() - started:.1f} s")
        wait_for(partial(reached, {p: len(p.returned) + 1 for p in (single, batches)}), timeout=120,
                 what="both producers publishing again by themselves")
    finally:
        single.stopping.set()
        batches.stopping.set()
        single.join(PUBLISH_TIMEOUT + 10)
        batches.join(PUBLISH_TIMEOUT + 10)

    try:
        # Then every publish that returned is processed at least once, by the same worker processes
        def tallies() -> tuple[Tally, Tally]:
            one = Tally(single.returned, [e["id"] for e in jsonl(settings.test_queue_file)])
            many = Tally(batches.returned, [i for b in jsonl(settings.var_dir / "test_batch.jsonl") for i in b["ids"]])
            return one, many

        wait_for(lambda: not any(t.missing for t in tallies()), timeout=120, what="every returned publish processed")
        one, many = tallies()
        print(one.report("one at a time"))
        print(many.report("in batches"))
        print(f"publishes that raised: {len(single.failed) + len(batches.failed)}")
        assert all(w.process.poll() is None for w in workers), [w.log for w in workers]
        # In flight when the node died: the consumer's unacked prefetch window, and the unconfirmed publishes
        # a producer sends again after reconnecting.
        assert one.duplicates <= KILLS * (settings.prefetch + 1)
        assert many.duplicates <= KILLS * (settings.prefetch + BATCH)
        assert single.failed == batches.failed == []
    finally:
        for worker in workers:
            worker.stop()
        set_broker(None)
