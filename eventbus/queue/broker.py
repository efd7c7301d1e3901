"""The broker interface, and the functions producers and workers call.

Two brokers implement it: ``RabbitMQBroker`` (the real one) and
``MemoryBroker`` (in-process, for unit tests and for running without
RabbitMQ). ``EVENTBUS_BROKER`` (``amqp`` or ``memory``) picks the one that
``get_broker()`` returns.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventbus import codec
from eventbus.contracts import check_queue_name
from eventbus.queue.consumer import BatchCallback, Consumer
from eventbus.queue.delay import delay_queue_name
from eventbus.queue.error_store import ErrorStore
from eventbus.settings import Settings, get_settings

if TYPE_CHECKING:
    from eventbus.queue.tornado_client import TornadoClient


@dataclass(frozen=True)
class QueueInfo:
    """What the broker says of a queue right now."""

    name: str
    exists: bool
    depth: int  # events ready for delivery (not counting those delivered and not yet acked)
    consumers: int


class Broker(ABC):
    """Publishes events to queues and makes consumers for them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.error_store = ErrorStore(settings.var_dir)

    def publish(self, queue: str, event: Any) -> None:
        """Publish one event; returns once the broker has it."""
        self.publish_many(queue, [event])

    def publish_many(self, queue: str, events: Iterable[Any]) -> None:
        """Publish events in order; returns once the broker has them all.

        Every event is encoded before any is sent: an event that is not JSON
        raises EventEncodingError and nothing of the batch is published.
        """
        check_queue_name(queue)
        bodies = [codec.encode(event) for event in events]
        if bodies:
            self.publish_bodies(queue, bodies)

    def publish_routed(self, routed: Iterable[tuple[str, Any]]) -> None:
        """Publish each (queue, event), in order; returns once the broker has them all.

        ``publish_many`` over several queues: one round trip of confirms for
        the lot, and nothing published if one event is not JSON.
        """
        bodies = [(check_queue_name(queue), codec.encode(event)) for queue, event in routed]
        if bodies:
            self.publish_routed_bodies(bodies)

    def publish_routed_bodies(self, routed: list[tuple[str, bytes]]) -> None:
        """Publish already encoded (queue, body) pairs in order (a broker with pipelined confirms overrides it)."""
        for queue, body in routed:
            self.publish_bodies(queue, [body])

    def publish_later(self, queue: str, events: Iterable[Any], delay: float) -> None:
        """Publish events that reach ``queue`` after ``delay`` seconds (retries use this).

        Returns once the broker holds them: a crash meanwhile loses nothing.
        """
        if delay <= 0:
            self.publish_many(queue, events)
        else:
            self.publish_many(delay_queue_name(check_queue_name(queue), delay), events)

    @abstractmethod
    def publish_bodies(self, queue: str, bodies: list[bytes]) -> None:
        """Publish already encoded bodies (replaying the error store uses this too)."""

    @abstractmethod
    def consumer(
        self,
        queue: str,
        callback: BatchCallback,
        *,
        batch_size: int = 1,
        timeout: float | None = None,
        prefetch: int | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> Consumer:
        """A consumer of ``queue``; ``run()`` it, ``stop()`` it from anywhere."""

    def consume(self, queue: str, callback: BatchCallback, batch_size: int = 1, timeout: float | None = None) -> None:
        """Consume ``queue`` in this thread until the callback raises (see ``eventbus.queue.consumer``)."""
        self.consumer(queue, callback, batch_size=batch_size, timeout=timeout).run()

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every ready event in ``queue``; return how many there were."""

    @abstractmethod
    def queue_info(self, queue: str) -> QueueInfo:
        """Depth and consumers of ``queue`` (``exists=False`` if there is no such queue)."""

    def queue_infos(self, queues: Iterable[str]) -> list[QueueInfo]:
        """``queue_info`` of several queues (over one connection, where the broker has connections)."""
        return [self.queue_info(queue) for queue in queues]

    @abstractmethod
    def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` and its events."""

    def close(self) -> None:
        """Release connections held by this broker (for the calling thread, where they are per thread)."""

    @abstractmethod
    def tornado_client(self, name: str = "tornado") -> TornadoClient:
        """A client of this broker's queues for use inside a running Tornado IOLoop (see ``TornadoClient``)."""


_lock = threading.Lock()
_broker: Broker | None = None


def make_broker(settings: Settings) -> Broker:
    """A new broker of the kind ``settings.broker`` names."""
    if settings.broker == "memory":
        from eventbus.queue.memory import MemoryBroker

        return MemoryBroker(settings)
    from eventbus.queue.rabbitmq import RabbitMQBroker

    return RabbitMQBroker(settings)


def get_broker() -> Broker:
    """The process's broker, made from the settings on first use."""
    global _broker
    with _lock:
        if _broker is None:
            _broker = make_broker(get_settings())
        return _broker


def set_broker(broker: Broker | None) -> None:
    """Replace the process's broker (None: make one from the settings on next use)."""
    global _broker
    with _lock:
        _broker = broker


def queue_json_publish(queue_name: str, event: Any) -> None:
    """Publish one JSON event to a queue; when this returns, the broker has it.

    Safe from any thread. Raises EventEncodingError for an event that is not
    JSON, BrokerUnreachable when RabbitMQ cannot be reached within the publish
    timeout, and UnroutableError when the queue vanished.
    """
    get_broker().publish(queue_name, event)


def queue_json_publish_many(queue_name: str, events: Iterable[Any]) -> None:
    """Publish JSON events in order with pipelined confirms: one round trip for the batch."""
    get_broker().publish_many(queue_name, events)


def consume(queue_name: str, callback: BatchCallback, batch_size: int = 1, timeout: float | None = None) -> None:
    """Consume a queue in this thread, calling ``callback(events)`` per batch; see Broker.consume."""
    get_broker().consume(queue_name, callback, batch_size=batch_size, timeout=timeout)
