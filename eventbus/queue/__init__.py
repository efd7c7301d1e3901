"""The RabbitMQ layer: publish and consume JSON events.

Producers call ``queue_json_publish(queue, event)``; workers call
``consume(queue, callback)``; the Tornado server uses the ``TornadoClient``
its broker makes (``broker.tornado_client()``). ``EVENTBUS_BROKER=memory``
swaps RabbitMQ for the in-process ``MemoryBroker``.
"""

from eventbus.contracts import check_queue_name
from eventbus.queue.broker import (
    Broker,
    QueueInfo,
    consume,
    get_broker,
    make_broker,
    queue_json_publish,
    queue_json_publish_many,
    set_broker,
)
from eventbus.queue.consumer import Consumer
from eventbus.queue.error_store import ErrorStore
from eventbus.queue.memory import MemoryBroker
from eventbus.queue.tornado_client import MemoryTornadoClient, TornadoClient, TornadoQueueClient

__all__ = [
    "Broker",
    "Consumer",
    "ErrorStore",
    "MemoryBroker",
    "MemoryTornadoClient",
    "QueueInfo",
    "TornadoClient",
    "TornadoQueueClient",
    "check_queue_name",
    "consume",
    "get_broker",
    "make_broker",
    "queue_json_publish",
    "queue_json_publish_many",
    "set_broker",
]
