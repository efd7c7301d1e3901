"""The RabbitMQ broker: confirmed publishing per thread, and consumers for workers."""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from queue import Empty, SimpleQueue

import pika
import pika.adapters.blocking_connection
import pika.exceptions
from pika.adapters.select_connection import IOLoop

from eventbus import codec
from eventbus.contracts import check_queue_name
from eventbus.errors import (
    BrokerError,
    BrokerUnreachable,
    ConsumerError,
    EventEncodingError,
    QueueMismatchError,
    QueueNotFound,
)
from eventbus.queue.broker import Broker, QueueInfo
from eventbus.queue.client import AmqpClient
from eventbus.queue.consumer import BatchCallback, Consumer, Delivery
from eventbus.queue.declarations import DEAD_LETTER_REASON, DELIVERY_LIMIT, dead_letter_queue_name
from eventbus.queue.frames import FastSelectConnection
from eventbus.queue.publisher import BlockingPublisher
from eventbus.queue.tornado_client import TornadoClient, TornadoQueueClient
from eventbus.settings import Settings

logger = logging.getLogger(__name__)

#: RabbitMQ's reply code for "no such queue".
NOT_FOUND = 404


class RabbitMQBroker(Broker):
    """Publishes through one confirmed connection per thread; each consumer has its own connection."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._local = threading.local()

    def _publisher(self) -> BlockingPublisher:
        local = self._local
        # A forked child must not share its parent's socket: it gets a connection of its own.
        if getattr(local, "pid", None) != os.getpid():
            local.publisher = BlockingPublisher(self.settings)
            local.pid = os.getpid()
        publisher: BlockingPublisher = local.publisher
        return publisher

    def publish_bodies(self, queue: str, bodies: list[bytes]) -> None:
        self._publisher().publish_many(queue, bodies)

    def publish_routed_bodies(self, routed: list[tuple[str, bytes]]) -> None:
        self._publisher().publish_routed(routed)

    def tornado_client(self, name: str = "tornado") -> TornadoClient:
        return TornadoQueueClient(self.settings, error_store=self.error_store, name=name)

    def close(self) -> None:
        publisher = getattr(self._local, "publisher", None)
        if publisher is not None and self._local.pid == os.getpid():
            publisher.close()
        self._local.__dict__.clear()

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
        return RabbitMQConsumer(self.settings, queue, callback, batch_size=batch_size, timeout=timeout,
                                prefetch=prefetch, error_store=self.error_store, on_idle=on_idle)

    @contextmanager
    def _admin_channel(self) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
        """A short-lived channel for the operator's commands; pika's errors become ours."""
        try:
            # pika tries each node of a cluster in turn.
            connection = pika.BlockingConnection([pika.URLParameters(url) for url in self.settings.connection_urls])
        except pika.exceptions.AMQPError as e:
            raise BrokerUnreachable(f"cannot reach RabbitMQ at {self.settings.redacted_url}: {e!r}") from None
        try:
            yield connection.channel()
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code == NOT_FOUND:
                raise QueueNotFound(e.reply_text) from None
            raise BrokerError(f"RabbitMQ refused: {e.reply_code} {e.reply_text}") from None
        except pika.exceptions.AMQPError as e:
            raise BrokerError(f"RabbitMQ at {self.settings.redacted_url} failed: {e!r}") from None
        finally:
            if connection.is_open:
                connection.close()

    def queue_info(self, queue: str) -> QueueInfo:
        return self.queue_infos([queue])[0]

    def queue_infos(self, queues: Iterable[str]) -> list[QueueInfo]:
        infos = []
        with self._admin_channel() as channel:
            connection = channel.connection
            for queue in queues:
                if not channel.is_open:  # a passive declare of a missing queue closes the channel
                    channel = connection.channel()
                try:
                    ok = channel.queue_declare(check_queue_name(queue), passive=True).method
                    infos.append(QueueInfo(queue, exists=True, depth=ok.message_count, consumers=ok.consumer_count))
                except pika.exceptions.ChannelClosedByBroker as e:
                    if e.reply_code != NOT_FOUND:
                        raise
                    infos.append(QueueInfo(queue, exists=False, depth=0, consumers=0))
        return infos

    def purge(self, queue: str) -> int:
        with self._admin_channel() as channel:
            try:
                channel.queue_declare(check_queue_name(queue), passive=True)
            except pika.exceptions.ChannelClosedByBroker as e:
                if e.reply_code == NOT_FOUND:
                    raise QueueNotFound(f"no queue named {queue!r}") from None
                raise
            return int(channel.queue_purge(queue).method.message_count)

    def delete_queue(self, queue: str) -> None:
        with self._admin_channel() as channel:
            channel.queue_delete(check_queue_name(queue))


class _Wake:
    """Put in a consumer's inbox to make a waiting ``_get`` return."""


_WAKE = _Wake()


class RabbitMQConsumer(Consumer):
    """A consumer whose pika I/O runs in a thread of its own.

    The callback runs in the thread that called ``run()``; the connection,
    heartbeats included, is served by an I/O thread meanwhile, so a callback
    may take longer than the heartbeat timeout (pika issue 636). Acks go to
    the I/O thread through ``add_callback_threadsafe``; acks that pile up
    while it is busy are sent as one ``multiple`` ack.

    Deliveries cross from the I/O thread in chunks: everything one read from
    the socket brought is handed over at once, when pika has parsed it. The
    threads then meet once per chunk rather than once per delivery, which is
    most of what two threads cost over one (a wake-up and a GIL hand-over
    each time they meet).
    """

    def __init__(self, settings: Settings, queue: str, callback: BatchCallback, *,
                 prefetch: int | None = None, **options: object) -> None:
        super().__init__(queue, callback, **options)  # type: ignore[arg-type]
        self.settings = settings
        # Twice the batch: the next batch arrives while this one is processed.
        self.prefetch = prefetch or max(settings.prefetch, 2 * self.batch_size)
        self._inbox: SimpleQueue[list[Delivery] | _Wake] = SimpleQueue()
        self._arrived: list[Delivery] = []  # I/O thread only: deliveries of the read in progress
        self._hand_over_scheduled = False  # I/O thread only
        self._taken: deque[Delivery] = deque()  # worker thread only: handed over, not yet taken
        self._settlements: list[Settlement] = []
        self._settle_lock = threading.Lock()
        self._flush_scheduled = False
        self._failure: BaseException | None = None
        self._ioloop: IOLoop | None = None
        self._client: AmqpClient | None = None
        self._thread: threading.Thread | None = None

    @property
    def client(self) -> AmqpClient:
        assert self._client is not None, "the consumer is not running"
        return self._client

    def _open(self) -> None:
        self._failure = None
        # Deliveries of an earlier run went back to the queue when its connection closed.
        self._inbox, self._arrived, self._hand_over_scheduled = SimpleQueue(), [], False
        self._taken.clear()
        self._ioloop = ioloop = IOLoop()
        self._client = AmqpClient(
            self.settings, ioloop, partial(FastSelectConnection, custom_ioloop=ioloop),
            prefetch=self.prefetch, name=f"consumer of {self.queue}",
            on_dead_letter=self._on_dead_letter, on_queue_error=self._on_queue_error,
        )
        self._client.add_consumer(self.queue, self._on_message)
        self._thread = threading.Thread(target=self._io_main, name=f"amqp-io {self.queue}", daemon=True)
        self._thread.start()

    def _io_main(self) -> None:
        assert self._ioloop is not None and self._client is not None
        try:
            self._client.start()
            self._ioloop.start()
        except BaseException as e:
            logger.exception("consumer of %s: the connection thread died", self.queue)
            self._failure = e
            self._inbox.put(_WAKE)
        finally:
            self._ioloop.close()

    def _on_message(self, generation: int, tag: int, body: bytes) -> None:
        """Invoked in the I/O thread for each delivery."""
        self._arrived.append(Delivery(generation, tag, body))
        if not self._hand_over_scheduled:
            self._hand_over_scheduled = True
            assert self._ioloop is not None
            self._ioloop.call_later(0, self._hand_over)  # runs once this read's frames are all parsed

    def _on_dead_letter(self, queue: str, generation: int, tag: int, body: bytes) -> None:
        """Invoked in the I/O thread for an event RabbitMQ dead-lettered: delivered ``DELIVERY_LIMIT`` times, never
        acked (it killed its worker each time). It goes to the error store, then is acked; rare enough to write
        here, off the worker's thread, so a worker busy with a long batch still empties its dead-letter queue."""
        try:
            event, raw = codec.decode(body), None
        except EventEncodingError:
            event, raw = None, body
        try:
            self.error_store.record(queue, event, raw=raw, error=DEAD_LETTER_REASON, tries=DELIVERY_LIMIT + 1)
        except OSError:
            logger.exception("consumer of %s: could not write a dead-lettered event to the error store; "
                             "it stays in %s", queue, dead_letter_queue_name(queue))
            self.client.nack(generation, tag, requeue=True)
            return
        self.client.ack(generation, tag)

    def _on_queue_error(self, queue: str, error: BaseException) -> None:
        """Invoked in the I/O thread when RabbitMQ refused to declare the queue: ``run()`` raises it."""
        self._failure = error
        self._inbox.put(_WAKE)

    def _hand_over(self) -> None:
        """Invoked in the I/O thread: pass the deliveries that arrived to the worker thread."""
        self._hand_over_scheduled = False
        arrived, self._arrived = self._arrived, []
        self._inbox.put(arrived)

    def _get(self, timeout: float | None) -> Delivery | None:
        taken = self._taken
        while True:
            while taken:
                delivery = taken.popleft()
                if delivery.generation == self.client.generation:
                    return delivery
                # Delivered on a channel that has since closed: RabbitMQ delivers it again.
            try:
                item = self._inbox.get_nowait() if timeout == 0 else self._inbox.get(timeout=timeout)
            except Empty:
                return None
            if isinstance(item, _Wake):
                if isinstance(self._failure, QueueMismatchError):
                    raise self._failure
                if self._failure is not None:
                    raise ConsumerError(f"consumer of {self.queue}: connection thread died") from self._failure
                return None
            taken.extend(item)

    def _wake(self) -> None:
        self._inbox.put(_WAKE)  # SimpleQueue.put is reentrant: safe in a signal handler

    def _settle(self, delivery: Delivery, *, ack: bool, multiple: bool) -> None:
        with self._settle_lock:
            self._settlements.append((ack, delivery, multiple))
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        assert self._ioloop is not None
        self._ioloop.add_callback_threadsafe(self._flush_settlements)

    def _flush_settlements(self) -> None:
        """Invoked in the I/O thread: send the acks and nacks asked for, in order."""
        with self._settle_lock:
            settlements, self._settlements = self._settlements, []
            self._flush_scheduled = False
        client = self.client
        for ack, delivery, multiple in coalesced(settlements):
            if ack:
                client.ack(delivery.generation, delivery.tag, multiple)
            else:
                client.nack(delivery.generation, delivery.tag, multiple, requeue=True)

    def _close(self) -> None:
        thread, ioloop, client = self._thread, self._ioloop, self._client
        if thread is None or ioloop is None or client is None:
            return
        if thread.is_alive():
            # Runs after any pending settlements: callbacks run in the order they were added.
            ioloop.add_callback_threadsafe(lambda: client.close(on_closed=ioloop.stop))
            thread.join(timeout=10)
            if thread.is_alive():
                logger.warning("consumer of %s: connection thread did not stop within 10 s", self.queue)
        self._thread = None


Settlement = tuple[bool, Delivery, bool]  # ack (else nack with requeue), the delivery, multiple


def coalesced(settlements: list[Settlement]) -> list[Settlement]:
    """``settlements`` without the acks that the next one covers: a multiple ack, on the same channel, of a tag
    at least as high."""
    kept = []
    for i, (ack, delivery, multiple) in enumerate(settlements):
        if ack and i + 1 < len(settlements):
            next_ack, next_delivery, next_multiple = settlements[i + 1]
            if (next_ack and next_multiple and next_delivery.generation == delivery.generation
                    and next_delivery.tag >= delivery.tag):
                continue
        kept.append((ack, delivery, multiple))
    return kept
