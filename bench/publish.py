"""Publishing (issue 2): events/s of eventbus's publishing paths, against raw pika and kombu.

Every case publishes the same events, each a Python dict encoded to JSON
inside the timed loop (with ujson, as ``eventbus.codec`` does; kombu with its
own ``json`` serializer), persistent (``delivery_mode=2``), to the same
durable queue on the same node. The queue is purged between runs, and the
purge checks that every event of the run reached it.

The baseline is the least a publisher can cost: pika's BlockingConnection
publishing without confirms, then one round trip so that the broker has them
all. eventbus's batch path, confirmed and pipelined, should keep at least
half of that speed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import kombu
import pika

from bench import register
from bench.harness import BenchError, Context, Result, Trial, measure
from eventbus import codec
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings

QUEUE = "bench_publish"
#: Events per run; 20,000 take about 2 s on the fast paths, long enough to time well.
EVENTS = 20_000
#: One confirmed publish at a time costs a round trip each (about 10x slower): fewer events.
SINGLE_EVENTS = 2_000
QUICK_EVENTS = 1_000
QUICK_SINGLE_EVENTS = 100
#: A batch as a busy producer (a bulk import, a digest run) hands over at once.
BATCH = 1_000
#: Confirmed and pipelined should keep at least half the speed of publishing blind.
BATCH_TARGET = 0.5
#: What the baseline sends, as eventbus does: persistent JSON.
PERSISTENT_JSON = pika.BasicProperties(delivery_mode=2, content_type="application/json")

Event = dict[str, Any]
#: Publishes the case's events once; timed.
Runner = Callable[[], None]
#: Connects (untimed) and yields the runner; disconnects on exit.
Opener = Callable[[Settings, list[Event]], AbstractContextManager[Runner]]


def make_event(i: int) -> Event:
    """A message event as a chat server hands to its workers: about 200 bytes of JSON."""
    return {
        "type": "message",
        "message_id": 100_000 + i,
        "sender_id": i % 100,
        "sender_email": f"user{i % 100}@example.com",
        "stream_id": 3,
        "topic": "benchmarks",
        "content": "The quick brown fox jumps over the lazy dog.",
        "timestamp": 1_700_000_000 + i,
    }


@contextmanager
def raw_pika(settings: Settings, events: list[Event]) -> Iterator[Runner]:
    """The baseline: pika's BlockingConnection, no confirms, the queue declared once."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.connection_url))
    try:
        channel = connection.channel()
        channel.queue_declare(QUEUE, durable=True)

        def run() -> None:
            for event in events:
                channel.basic_publish("", QUEUE, codec.encode(event), PERSISTENT_JSON)
            # Answered once the broker has handled every publish before it.
            channel.queue_declare(QUEUE, durable=True, passive=True)

        yield run
    finally:
        connection.close()


@contextmanager
def _eventbus(settings: Settings) -> Iterator[RabbitMQBroker]:
    broker = RabbitMQBroker(settings)
    try:
        yield broker
    finally:
        broker.close()


@contextmanager
def queue_json_publish(settings: Settings, events: list[Event]) -> Iterator[Runner]:
    """What ``queue_json_publish`` does: one publish, awaiting its confirm, per event."""
    with _eventbus(settings) as broker:

        def run() -> None:
            for event in events:
                broker.publish(QUEUE, event)

        yield run


def queue_json_publish_many(batch: int | None) -> Opener:
    """Publishing in batches of ``batch`` events (None: all in one)."""

    @contextmanager
    def open_(settings: Settings, events: list[Event]) -> Iterator[Runner]:
        size = batch or len(events)
        batches = [events[i:i + size] for i in range(0, len(events), size)]
        with _eventbus(settings) as broker:

            def run() -> None:
                for chunk in batches:
                    broker.publish_many(QUEUE, chunk)

            yield run

    return open_


def kombu_producer(*, confirm: bool) -> Opener:
    """kombu's Producer on its default (py-amqp) transport, with ``confirm_publish`` or without."""

    @contextmanager
    def open_(settings: Settings, events: list[Event]) -> Iterator[Runner]:
        options = {"confirm_publish": True} if confirm else {}
        with kombu.Connection(settings.connection_url, transport_options=options) as connection:
            channel = connection.channel()
            kombu.Queue(QUEUE, durable=True)(channel).declare()
            producer = kombu.Producer(channel, routing_key=QUEUE, serializer="json")

            def run() -> None:
                for event in events:
                    producer.publish(event, delivery_mode=2)
                if not confirm:
                    channel.queue_declare(QUEUE, durable=True, passive=True)  # a round trip, as for raw pika

            yield run

    return open_


@dataclass(frozen=True)
class Case:
    name: str
    open: Opener
    #: One round trip per event: runs on SINGLE_EVENTS.
    single: bool = False
    baseline: bool = False
    target: float | None = None


CASES = (
    Case("raw pika basic_publish, no confirms", raw_pika, baseline=True),
    Case("queue_json_publish, one at a time", queue_json_publish, single=True),
    Case(f"queue_json_publish_many, batches of {BATCH:,}", queue_json_publish_many(BATCH), target=BATCH_TARGET),
    Case("queue_json_publish_many, one batch of all", queue_json_publish_many(None), target=BATCH_TARGET),
    Case("kombu Producer.publish, no confirms", kombu_producer(confirm=False)),
    Case("kombu Producer.publish, confirm_publish", kombu_producer(confirm=True), single=True),
)


@register("publish", "events/s of each way to publish, against raw pika without confirms (issue 2)")
def publish(context: Context) -> list[Result]:
    settings = Settings(amqp_url=context.amqp_url, var_dir=context.work_dir / "var")
    events = [make_event(i) for i in range(context.size(EVENTS, QUICK_EVENTS))]
    single = events[:context.size(SINGLE_EVENTS, QUICK_SINGLE_EVENTS)]
    loads = [single if case.single else events for case in CASES]
    with _eventbus(settings) as admin, ExitStack() as stack:
        admin.delete_queue(QUEUE)  # a broker given with --amqp-url may hold an old one
        stack.callback(admin.delete_queue, QUEUE)
        trials = [_trial(stack, case, settings, admin, load) for case, load in zip(CASES, loads, strict=True)]
        samples = measure(trials, repeats=context.repeats)
    return [Result("publish", case.name, len(load), seconds, baseline=case.baseline, target=case.target)
            for case, load, seconds in zip(CASES, loads, samples, strict=True)]


def _trial(stack: ExitStack, case: Case, settings: Settings, admin: RabbitMQBroker, events: list[Event]) -> Trial:
    """Connect ``case`` for the whole benchmark (``stack`` disconnects it); after each run, purge and check."""

    def empty_queue() -> None:
        found = admin.purge(QUEUE)
        if found != len(events):
            raise BenchError(f"{case.name}: {len(events)} events published but {found} reached the queue")

    return Trial(stack.enter_context(case.open(settings, events)), empty_queue)
