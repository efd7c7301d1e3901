"""The blocking consumer that workers run, against a real RabbitMQ."""

from __future__ import annotations

import threading
import time
from typing import Any

import pika
import pytest

from eventbus.queue import Consumer
from eventbus.queue.consumer import Delivery
from eventbus.queue.rabbitmq import RabbitMQBroker, RabbitMQConsumer, coalesced
from eventbus.settings import Settings
from tests.conftest import wait_for
from tests.forwarder import Forwarder


def run_in_thread(consumer: Consumer) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run()
        except BaseException as e:
            raised.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, raised


def stop(consumer: Consumer, thread: threading.Thread) -> None:
    """Stop a consumer run by ``run_in_thread``; it must end."""
    consumer.stop()
    thread.join(10)
    assert not thread.is_alive(), "the consumer did not stop within 10 s"


def publish_raw(settings: Settings, queue: str, bodies: list[bytes]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        for body in bodies:
            channel.basic_publish("", queue, body)
    finally:
        connection.close()


def test_batches_are_bounded_and_everything_is_acked(broker: RabbitMQBroker, queue_name: str) -> None:
    broker.publish_many(queue_name, [{"n": n} for n in range(250)])
    batches: list[list[Any]] = []
    consumer = broker.consumer(queue_name, batches.append, batch_size=100, timeout=0.5)
    thread, raised = run_in_thread(consumer)
    wait_for(lambda: sum(map(len, batches)) == 250, what="250 events")
    stop(consumer, thread)
    assert not raised
    assert all(1 <= len(b) <= 100 for b in batches)
    assert [e["n"] for b in batches for e in b] == list(range(250))
    info = broker.queue_info(queue_name)
    assert (info.depth, info.consumers) == (0, 0)  # acked: nothing came back when the consumer left


def test_failing_callback_nacks_its_batch_and_raises(broker: RabbitMQBroker, queue_name: str) -> None:
    broker.publish_many(queue_name, [{"n": n} for n in range(5)])

    def fail(events: list[Any]) -> None:
        raise RuntimeError("processor broke")

    with pytest.raises(RuntimeError, match="processor broke"):
        broker.consume(queue_name, fail, batch_size=5, timeout=1)
    assert broker.queue_info(queue_name).depth == 5
    # Requeued events come back in their order.
    got: list[Any] = []
    consumer = broker.consumer(queue_name, got.extend, batch_size=5, timeout=1)
    thread, _ = run_in_thread(consumer)
    wait_for(lambda: len(got) == 5, what="redelivery")
    stop(consumer, thread)
    assert [e["n"] for e in got] == list(range(5))


def test_keyboard_interrupt_in_callback_requeues_and_propagates(broker: RabbitMQBroker, queue_name: str) -> None:
    broker.publish(queue_name, {"n": 1})

    def interrupted(events: list[Any]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        broker.consume(queue_name, interrupted)
    assert broker.queue_info(queue_name).depth == 1


def test_body_that_is_not_json_goes_to_the_error_store(settings: Settings, broker: RabbitMQBroker,
                                                       queue_name: str) -> None:
    publish_raw(settings, queue_name, [b'{"n": 1}', b"{not json", b'{"n": 2}'])
    got: list[Any] = []
    consumer = broker.consumer(queue_name, got.extend)
    thread, raised = run_in_thread(consumer)
    wait_for(lambda: len(got) == 2, what="the two good events")
    stop(consumer, thread)
    assert not raised
    assert got == [{"n": 1}, {"n": 2}]
    [entry] = broker.error_store.read(queue_name)
    assert entry["raw"] == "{not json"
    assert "not valid JSON" in entry["error"]
    assert broker.queue_info(queue_name).depth == 0


def test_stop_finishes_the_batch_in_hand_and_returns_the_rest(broker: RabbitMQBroker, queue_name: str) -> None:
    broker.publish_many(queue_name, [{"n": n} for n in range(50)])
    started = threading.Event()
    release = threading.Event()
    done: list[Any] = []

    def slow(events: list[Any]) -> None:
        started.set()
        release.wait(10)
        done.extend(events)

    consumer = broker.consumer(queue_name, slow, batch_size=10, timeout=0.5)
    thread, raised = run_in_thread(consumer)
    assert started.wait(10)
    consumer.stop()
    release.set()
    thread.join(10)
    assert not thread.is_alive() and not raised
    assert len(done) == 10
    assert broker.queue_info(queue_name).depth == 40


def test_long_callback_keeps_heartbeats_flowing(settings: Settings, queue_name: str) -> None:
    # A 1 s heartbeat: RabbitMQ drops a connection silent for about 2 s; the callback takes 4 s.
    broker = RabbitMQBroker(settings.replace(amqp_url=settings.amqp_url + "?heartbeat=1"))
    broker.publish_many(queue_name, [{"n": 1}, {"n": 2}])
    done: list[Any] = []

    def long_job(events: list[Any]) -> None:
        if not done:
            time.sleep(4)  # the work itself, not a wait for a condition
        done.extend(events)

    consumer = broker.consumer(queue_name, long_job)
    thread, raised = run_in_thread(consumer)
    wait_for(lambda: len(done) == 2, timeout=20, what="both events")
    assert isinstance(consumer, RabbitMQConsumer)
    assert consumer.client.connects == 1, consumer.client.statistics()
    stop(consumer, thread)
    assert not raised
    assert [e["n"] for e in done] == [1, 2]
    assert broker.queue_info(queue_name).depth == 0


def test_consumer_reconnects_after_a_cut_and_loses_nothing(settings: Settings, broker: RabbitMQBroker,
                                                           forwarder: Forwarder, queue_name: str) -> None:
    via_forwarder = RabbitMQBroker(settings.replace(amqp_url=forwarder.url()))
    seen: list[int] = []
    consumer = via_forwarder.consumer(queue_name, lambda events: seen.extend(e["n"] for e in events), batch_size=20)
    thread, raised = run_in_thread(consumer)
    broker.publish_many(queue_name, [{"n": n} for n in range(500)])
    wait_for(lambda: len(seen) >= 100, what="first events")
    forwarder.cut()
    broker.publish_many(queue_name, [{"n": n} for n in range(500, 1000)])
    wait_for(lambda: set(seen) == set(range(1000)), timeout=30, what="every event after the cut")
    stop(consumer, thread)
    assert not raised
    assert isinstance(consumer, RabbitMQConsumer) and consumer.client.connects >= 2
    assert broker.queue_info(queue_name).depth == 0


def test_a_batch_ending_in_a_body_that_is_not_json_is_acked_once(settings: Settings, broker: RabbitMQBroker,
                                                                  queue_name: str) -> None:
    publish_raw(settings, queue_name, [b'{"n": 1}', b"not json", b'{"n": 2}', b"nor this"])
    got: list[Any] = []
    consumer = broker.consumer(queue_name, got.extend, batch_size=2, timeout=1)
    thread, raised = run_in_thread(consumer)
    wait_for(lambda: len(got) == 2 and broker.error_store.count(queue_name) == 2, what="all four handled")
    wait_for(lambda: broker.queue_info(queue_name).depth == 0, what="all acked")
    stop(consumer, thread)
    assert not raised
    assert isinstance(consumer, RabbitMQConsumer)
    # Acking a delivery twice makes RabbitMQ close the channel; a second channel would show here.
    assert consumer.client.connects == 1, consumer.client.statistics()
    assert [e["raw"] for e in broker.error_store.read(queue_name)] == ["not json", "nor this"]
    # And each was acked at all: one left unacked would be back in the queue now that the consumer is gone.
    assert broker.queue_info(queue_name).depth == 0


def test_events_larger_than_a_frame_arrive_whole_among_small_ones(broker: RabbitMQBroker, queue_name: str) -> None:
    # RabbitMQ splits a body larger than its frame size (128 KiB) into several frames; pika assembles those,
    # while small ones take eventbus's fast path (eventbus.queue.frames). Order and content must not care.
    events = [{"n": 0}, {"n": 1, "text": "x" * 300_000}, {"n": 2}, {"n": 3, "text": "é" * 100_000}, {"n": 4}]
    broker.publish_many(queue_name, events)
    got: list[Any] = []
    consumer = broker.consumer(queue_name, got.extend, batch_size=10, timeout=0.2)
    thread, raised = run_in_thread(consumer)
    wait_for(lambda: len(got) == 5, what="five events")
    stop(consumer, thread)
    assert not raised
    assert got == events
    assert broker.queue_info(queue_name).depth == 0


def test_an_ack_is_left_out_only_when_the_next_one_covers_it() -> None:
    def ack(tag: int, multiple: bool = True, generation: int = 1) -> tuple[bool, Delivery, bool]:
        return (True, Delivery(generation, tag, b"{}"), multiple)

    nack = (False, Delivery(1, 9, b"{}"), True)
    assert coalesced([ack(3, False), ack(5)]) == [ack(5)]  # 5, multiple, covers 3
    # A body that is not JSON, last in its batch, is acked alone before the batch: the batch's ack does not cover it.
    assert coalesced([ack(5, False), ack(4)]) == [ack(5, False), ack(4)]
    assert coalesced([ack(3, False), ack(5, generation=2)]) == [ack(3, False), ack(5, generation=2)]
    assert coalesced([ack(3, False), nack]) == [ack(3, False), nack]
    assert coalesced([ack(3), ack(4, False)]) == [ack(3), ack(4, False)]
