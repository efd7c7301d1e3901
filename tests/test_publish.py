"""queue_json_publish and queue_json_publish_many against a real RabbitMQ."""

from __future__ import annotations

import threading
import time
from typing import Any

import pika
import pytest

from eventbus.errors import BrokerUnreachable, EventEncodingError, UnroutableError
from eventbus.queue import Consumer, queue_json_publish, queue_json_publish_many, set_broker
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings
from tests.forwarder import Forwarder


def drain(settings: Settings, queue: str, expected: int, timeout: float = 20.0) -> list[Any]:
    """Consume ``expected`` events from ``queue`` (acking them) and return them in order."""
    broker = RabbitMQBroker(settings)
    got: list[Any] = []
    consumer: Consumer | None = None

    def collect(events: list[Any]) -> None:
        got.extend(events)
        if len(got) >= expected:
            assert consumer is not None
            consumer.stop()

    consumer = broker.consumer(queue, collect, batch_size=100)
    timer = threading.Timer(timeout, consumer.stop)
    timer.start()
    try:
        consumer.run()
    finally:
        timer.cancel()
    assert len(got) >= expected, f"only {len(got)} of {expected} events arrived within {timeout} s"
    return got


def test_published_event_arrives_intact(settings: Settings, broker: RabbitMQBroker, queue_name: str) -> None:
    set_broker(broker)
    try:
        queue_json_publish(queue_name, {"type": "message", "text": "héllo ☃", "n": 1, "list": [1, None]})
    finally:
        set_broker(None)
    assert drain(settings, queue_name, 1) == [{"type": "message", "text": "héllo ☃", "n": 1, "list": [1, None]}]


def test_events_are_persistent_and_the_queue_durable(settings: Settings, broker: RabbitMQBroker,
                                                     queue_name: str) -> None:
    broker.publish(queue_name, {"n": 1})
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        # Declaring it non-durable must clash with the durable queue the publisher declared.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="durable"):
            channel.queue_declare(queue_name, durable=False)
        channel = connection.channel()
        _method, properties, body = channel.basic_get(queue_name, auto_ack=True)
        assert properties.delivery_mode == 2
        assert properties.content_type == "application/json"
        assert body == b'{"n":1}'
    finally:
        connection.close()


def test_batch_keeps_order(settings: Settings, broker: RabbitMQBroker, queue_name: str) -> None:
    set_broker(broker)
    try:
        queue_json_publish_many(queue_name, ({"n": n} for n in range(2000)))
    finally:
        set_broker(None)
    assert broker.queue_info(queue_name).depth == 2000
    assert [e["n"] for e in drain(settings, queue_name, 2000)] == list(range(2000))


def test_eight_threads_publishing_lose_and_duplicate_nothing(settings: Settings, broker: RabbitMQBroker,
                                                             queue_name: str) -> None:
    errors: list[BaseException] = []

    def produce(thread: int) -> None:
        try:
            for n in range(250):
                broker.publish(queue_name, {"thread": thread, "n": n})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    got = drain(settings, queue_name, 2000)
    assert len(got) == 2000
    assert {(e["thread"], e["n"]) for e in got} == {(t, n) for t in range(8) for n in range(250)}
    # Each thread's events keep their order.
    for thread in range(8):
        assert [e["n"] for e in got if e["thread"] == thread] == list(range(250))


def test_event_that_is_not_json_is_refused_and_nothing_of_its_batch_published(
        broker: RabbitMQBroker, queue_name: str) -> None:
    with pytest.raises(EventEncodingError, match="not JSON-serializable"):
        broker.publish_many(queue_name, [{"ok": 1}, {"bad": object()}])
    with pytest.raises(EventEncodingError):
        broker.publish(queue_name, {"nan": float("nan")})
    assert broker.queue_info(queue_name).exists is False


def test_bad_queue_name_is_refused(broker: RabbitMQBroker) -> None:
    with pytest.raises(ValueError, match="invalid queue name"):
        broker.publish("../etc/passwd", {"n": 1})


def test_publish_to_a_deleted_queue_is_an_error_not_silence(broker: RabbitMQBroker, queue_name: str) -> None:
    broker.publish(queue_name, {"n": 1})
    broker.delete_queue(queue_name)
    with pytest.raises(UnroutableError, match=queue_name):
        broker.publish(queue_name, {"n": 2})
    # The next publish declares the queue again and goes through.
    broker.publish(queue_name, {"n": 3})
    assert broker.queue_info(queue_name).depth == 1


def test_broker_down_raises_our_error_naming_the_url_without_password(
        rabbitmq_node: object, forwarder: Forwarder, tmp_path: object, queue_name: str) -> None:
    settings = Settings(amqp_url=forwarder.url(), var_dir=tmp_path, publish_timeout=1.0)  # type: ignore[arg-type]
    broker = RabbitMQBroker(settings)
    broker.publish(queue_name, {"n": 1})
    forwarder.refuse()
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable) as raised:
        broker.publish(queue_name, {"n": 2})
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert f"amqp://guest:***@127.0.0.1:{forwarder.port}/%2F" in message
    assert "guest:guest" not in message


def test_publish_survives_a_cut_connection(settings: Settings, forwarder: Forwarder, queue_name: str) -> None:
    via_forwarder = settings.replace(amqp_url=forwarder.url())
    broker = RabbitMQBroker(via_forwarder)
    for n in range(100):
        broker.publish(queue_name, {"n": n})
        if n % 25 == 10:
            forwarder.cut()
    broker.publish_many(queue_name, [{"n": n} for n in range(100, 600)])
    forwarder.cut()
    broker.publish_many(queue_name, [{"n": n} for n in range(600, 1000)])
    assert forwarder.accepted >= 5
    got = {e["n"] for e in drain(settings, queue_name, 1000)}
    assert got == set(range(1000))


def test_publish_waits_out_a_short_outage(settings: Settings, forwarder: Forwarder, queue_name: str) -> None:
    broker = RabbitMQBroker(settings.replace(amqp_url=forwarder.url(), publish_timeout=10.0))
    broker.publish(queue_name, {"n": 0})
    forwarder.refuse()
    threading.Timer(0.5, forwarder.restore).start()
    broker.publish(queue_name, {"n": 1})  # retries with backoff until the broker is back
    assert [e["n"] for e in drain(settings, queue_name, 2)] == [0, 1]
