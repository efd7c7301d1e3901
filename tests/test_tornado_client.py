"""The Tornado-side clients inside a running IOLoop: TornadoQueueClient against a real RabbitMQ, and the interface
it shares with the in-process broker's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from tornado.ioloop import IOLoop, PeriodicCallback

from eventbus.errors import EventEncodingError
from eventbus.queue import Broker, MemoryBroker
from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.queue.tornado_client import TornadoClient, TornadoQueueClient
from eventbus.settings import Settings
from tests.conftest import until, wait_for
from tests.eventserver import run
from tests.forwarder import Forwarder


class LagMeter:
    """Measures how late a 10 ms periodic callback runs: a blocked loop shows as lag."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._last = time.monotonic()
        self._periodic = PeriodicCallback(self._tick, 10)

    def _tick(self) -> None:
        now = time.monotonic()
        self.worst = max(self.worst, now - self._last - 0.010)
        self._last = now

    def __enter__(self) -> LagMeter:
        self._last = time.monotonic()
        self._periodic.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._periodic.stop()


@pytest.mark.parametrize("kind", ["amqp", "memory"])
def test_each_broker_makes_its_own_client_and_the_server_needs_only_the_interface(
        settings: Settings, broker: RabbitMQBroker, queue_name: str, kind: str) -> None:
    # Given a broker of either kind, and the client it makes (what the event server does)
    chosen: Broker = broker if kind == "amqp" else MemoryBroker(settings.replace(broker="memory"))
    client = chosen.tornado_client(name="test")
    assert isinstance(client, TornadoClient)
    got: list[Any] = []

    async def scenario() -> None:
        # When it consumes a queue, publishes to it, and one callback fails
        def handle(event: Any) -> None:
            if event.get("fail"):
                raise ValueError("this one fails")
            got.append(event)

        client.consume(queue_name, handle)
        client.start()
        await client.wait_ready(10)
        await client.publish(queue_name, {"n": 1})
        client.publish_nowait(queue_name, {"fail": True})
        await until(lambda: client.statistics()["failed"] == 1 and got, what="both events handled")
        # Then both kinds report the same plain record
        stats = client.statistics()
        assert (stats["ready"], stats["consumed"], stats["failed"], stats["publish_failures"]) == (True, 1, 1, 0)
        await client.close()

    run(scenario)
    assert got == [{"n": 1}]
    # and the failed event is in the broker's error store
    wait_for(lambda: chosen.error_store.count(queue_name) == 1, what="the failed event stored")
    assert chosen.error_store.read(queue_name)[0]["error"] == "ValueError: this one fails"


def test_consumes_inside_the_ioloop_and_acks(settings: Settings, broker: RabbitMQBroker, queue_name: str) -> None:
    got: list[Any] = []

    async def scenario() -> None:
        client = TornadoQueueClient(settings)
        client.consume(queue_name, got.append)
        client.start()
        await client.wait_ready(10)
        await IOLoop.current().run_in_executor(None, broker.publish_many, queue_name, [{"n": n} for n in range(300)])
        await until(lambda: len(got) == 300, what="300 events")
        await client.close()

    run(scenario)
    assert [e["n"] for e in got] == list(range(300))
    assert broker.queue_info(queue_name).depth == 0


def test_publish_future_resolves_once_confirmed(settings: Settings, broker: RabbitMQBroker, queue_name: str) -> None:
    async def scenario() -> None:
        client = TornadoQueueClient(settings)
        client.start()
        await asyncio.gather(*(client.publish(queue_name, {"n": n}) for n in range(100)))
        assert client.statistics()["unconfirmed"] == 0
        with pytest.raises(EventEncodingError):
            client.publish(queue_name, {"bad": {1, 2}})
        await client.close()

    run(scenario)
    assert broker.queue_info(queue_name).depth == 100


def test_async_callback_is_acked_when_it_finishes(settings: Settings, broker: RabbitMQBroker,
                                                  queue_name: str) -> None:
    done: list[int] = []

    async def handle(event: Any) -> None:
        await asyncio.sleep(0.01)
        done.append(event["n"])

    async def scenario() -> None:
        client = TornadoQueueClient(settings)
        client.consume(queue_name, handle)
        client.start()
        for n in range(20):
            await client.publish(queue_name, {"n": n})
        await until(lambda: len(done) == 20, what="20 events")
        await client.close()

    run(scenario)
    assert sorted(done) == list(range(20))
    assert broker.queue_info(queue_name).depth == 0


def test_failing_callback_sends_the_event_to_the_error_store_and_goes_on(
        settings: Settings, broker: RabbitMQBroker, queue_name: str) -> None:
    good: list[Any] = []

    def handle(event: Any) -> None:
        if event.get("poison"):
            raise ValueError("cannot handle poison")
        good.append(event)

    async def scenario() -> None:
        client = TornadoQueueClient(settings)
        client.consume(queue_name, handle)
        client.start()
        for event in ({"n": 1}, {"poison": True}, {"n": 2}):
            await client.publish(queue_name, event)
        await until(lambda: len(good) == 2 and client.failed == 1, what="two good events and one failure")
        await until(lambda: broker.queue_info(queue_name).depth == 0, what="the poison event acked")
        await client.close()

    run(scenario)
    [entry] = broker.error_store.read(queue_name)
    assert entry["event"] == {"poison": True}
    assert "ValueError: cannot handle poison" in entry["error"]
    assert "Traceback" in entry["traceback"]


def test_loop_stays_responsive_and_publishes_are_held_while_the_broker_is_down(
        settings: Settings, broker: RabbitMQBroker, forwarder: Forwarder, queue_name: str) -> None:
    got: list[Any] = []

    async def scenario() -> None:
        client = TornadoQueueClient(settings.replace(amqp_url=forwarder.url()))
        client.consume(queue_name, got.append)
        client.start()
        await client.wait_ready(10)
        forwarder.refuse()
        await until(lambda: not client.ready, what="the client to notice the outage")
        with LagMeter() as lag:
            held = [client.publish(queue_name, {"n": n}) for n in range(10)]
            await asyncio.sleep(1.5)  # the outage lasts this long; the client retries meanwhile
            assert not any(f.done() for f in held)
            assert client.statistics()["failures"] >= 2
            forwarder.restore()
            await asyncio.gather(*held)
        await until(lambda: len(got) == 10, what="the held events to be consumed")
        assert lag.worst < 0.25, f"the IOLoop was blocked for {lag.worst:.3f} s"
        await client.close()

    run(scenario)
    assert sorted(e["n"] for e in got) == list(range(10))


def test_connecting_to_a_host_that_never_answers_does_not_block_the_loop(
        settings: Settings, forwarder: Forwarder, queue_name: str) -> None:
    forwarder.blackhole()

    async def scenario() -> None:
        client = TornadoQueueClient(settings.replace(amqp_url=forwarder.url("socket_timeout=1&stack_timeout=2")))
        with LagMeter() as lag:
            client.start()
            pending = client.publish(queue_name, {"n": 1})
            await until(lambda: forwarder.accepted >= 1, what="a connection attempt")
            await asyncio.sleep(1.0)  # the client is stuck in its handshake meanwhile
            assert not pending.done()
        assert lag.worst < 0.25, f"the IOLoop was blocked for {lag.worst:.3f} s"
        forwarder.restore()
        await asyncio.wait_for(pending, 30)
        await client.close()

    run(scenario)


def test_consumers_come_back_after_the_connection_is_cut(
        settings: Settings, broker: RabbitMQBroker, forwarder: Forwarder, queue_name: str) -> None:
    got: list[int] = []

    async def scenario() -> None:
        client = TornadoQueueClient(settings.replace(amqp_url=forwarder.url()))
        client.consume(queue_name, lambda e: got.append(e["n"]))
        client.start()
        await client.wait_ready(10)
        publish = IOLoop.current().run_in_executor
        await publish(None, broker.publish_many, queue_name, [{"n": n} for n in range(100)])
        await until(lambda: len(set(got)) == 100, what="first 100")
        forwarder.cut()
        await until(lambda: client.statistics()["connects"] >= 2, what="reconnect")
        await publish(None, broker.publish_many, queue_name, [{"n": n} for n in range(100, 200)])
        await until(lambda: set(got) == set(range(200)), what="events after the cut")
        await client.close()

    run(scenario)
