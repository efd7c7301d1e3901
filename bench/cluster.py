"""The cost of replication (issue 13): confirmed publishing to a quorum queue on a three-node cluster, against a
classic queue on one node.

Both sides publish the same events the same ways, through eventbus's own
publisher (``queue_json_publish`` and ``queue_json_publish_many``, confirmed):
one node's classic queue confirms once the event is on that node's disk; a
quorum queue confirms once a majority of the three nodes (two) wrote it, so
each confirm waits for a Raft round between nodes. The three nodes share this
machine, as the tests' cluster does: they compete for its cores, which makes
the cost look higher than on three machines. Reported, not a target.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial

from bench import register
from bench.harness import BenchError, Context, Result, Trial, measure
from bench.publish import BATCH, EVENTS, QUICK_EVENTS, QUICK_SINGLE_EVENTS, SINGLE_EVENTS, Event, make_event
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.rabbitmq_node import RabbitMQCluster
from eventbus.settings import Settings

logger = logging.getLogger(__name__)

QUEUE = "bench_cluster"
#: Nodes of the cluster: the smallest that survives losing one.
NODES = 3


@dataclass(frozen=True)
class Case:
    name: str
    #: Publishes the events once through the broker; timed.
    publish: Callable[[RabbitMQBroker, list[Event]], None]
    single: bool = False


def one_at_a_time(broker: RabbitMQBroker, events: list[Event]) -> None:
    for event in events:
        broker.publish(QUEUE, event)


def in_batches(broker: RabbitMQBroker, events: list[Event]) -> None:
    for i in range(0, len(events), BATCH):
        broker.publish_many(QUEUE, events[i:i + BATCH])


CASES = (
    Case("queue_json_publish, one at a time", one_at_a_time, single=True),
    Case(f"queue_json_publish_many, batches of {BATCH:,}", in_batches),
)


@contextmanager
def _cluster(context: Context) -> Iterator[RabbitMQCluster]:
    cluster = RabbitMQCluster(context.work_dir / "cluster", NODES, name=f"eventbus-bench-cluster-{os.getpid()}")
    logger.info("starting a private %d-node RabbitMQ cluster in %s", NODES, cluster.base_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        logger.info("stopping the cluster")
        cluster.stop()


@register("cluster", "confirmed publishes/s to a quorum queue on 3 nodes against a classic queue on 1 (issue 13)")
def cluster(context: Context) -> list[Result]:
    events = [make_event(i) for i in range(context.size(EVENTS, QUICK_EVENTS))]
    single = events[:context.size(SINGLE_EVENTS, QUICK_SINGLE_EVENTS)]
    with ExitStack() as stack:
        nodes = stack.enter_context(_cluster(context))
        sides = {
            "classic, 1 node": Settings(amqp_url=context.amqp_url, var_dir=context.work_dir / "var"),
            f"quorum, {NODES} nodes": Settings(amqp_url=nodes.url, queue_type="quorum",
                                               var_dir=context.work_dir / "var"),
        }
        trials, labels = [], []
        for side, settings in sides.items():
            broker = RabbitMQBroker(settings)
            stack.callback(broker.close)
            broker.delete_queue(QUEUE)  # a broker given with --amqp-url may hold an old one, of another type
            stack.callback(broker.delete_queue, QUEUE)
            for case in CASES:
                load = single if case.single else events
                trials.append(Trial(partial(case.publish, broker, load), _emptier(broker, len(load))))
                labels.append((f"{case.name}, {side}", len(load)))
        samples = measure(trials, repeats=context.repeats)
    # Each quorum case is compared with the same case on one node.
    return [Result("cluster", name, count, seconds, baseline=i < len(CASES),
                   versus=None if i < len(CASES) else labels[i - len(CASES)][0])
            for i, ((name, count), seconds) in enumerate(zip(labels, samples, strict=True))]


def _emptier(broker: RabbitMQBroker, expected: int) -> Callable[[], None]:
    """After each run: empty the queue, and check that every event of the run reached it."""

    def empty() -> None:
        found = broker.purge(QUEUE)
        if found != expected:
            raise BenchError(f"{expected} events published but {found} reached the queue")

    return empty
