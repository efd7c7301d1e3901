"""Queues inside a running Tornado IOLoop: one interface, ``TornadoClient``, and a client per kind of broker.

A broker makes the client of its kind (``broker.tornado_client(name)``):
``TornadoQueueClient`` for RabbitMQ, through pika's TornadoConnection, and
``MemoryTornadoClient`` for the in-process broker. The server uses either
through ``TornadoClient`` alone.

``TornadoQueueClient`` never blocks the loop: connecting (even to a host that
does not answer, pika issue 889), reconnecting (with backoff through
``IOLoop.call_later``), publishing and acking are all asynchronous, and the
error store is written from a thread of its own.

Thread rule: create a client, start it and call it from the IOLoop's thread
only; from another thread, go through ``IOLoop.add_callback``, the only
thread-safe method of Tornado's IOLoop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from tornado.ioloop import IOLoop

from eventbus import codec
from eventbus.contracts import check_queue_name
from eventbus.errors import EventEncodingError
from eventbus.queue.client import AmqpClient
from eventbus.queue.declarations import DEAD_LETTER_REASON
from eventbus.queue.error_store import ErrorStore, describe
from eventbus.queue.frames import FastTornadoConnection
from eventbus.settings import Settings

if TYPE_CHECKING:
    from eventbus.queue.consumer import Consumer
    from eventbus.queue.memory import MemoryBroker

logger = logging.getLogger(__name__)

#: How often close() looks whether the last publishes were confirmed.
CLOSE_POLL_SECONDS = 0.01
#: Called with one decoded event; may return an awaitable, and the event is acked once it is done.
EventCallback = Callable[[Any], Awaitable[None] | None]


class TornadoClient(ABC):
    """Publishes and consumes JSON events from within Tornado's IOLoop.

    - ``publish(queue, event)`` returns a Future that resolves once the broker
      has the event; ``publish_nowait`` does not wait, and logs and counts a
      failure.
    - ``consume(queue, callback)`` calls ``callback(event)`` for each event and
      acks it after the callback returns (or its awaitable finishes). An event
      that is not JSON, or whose callback raises, is logged and moved to the
      error store, then acked: it never wedges the consumer.
    - ``statistics()`` is a plain record: the connection's state, and the
      consumed, failed and publish_failures counts.
    """

    def __init__(self, error_store: ErrorStore, name: str) -> None:
        self.error_store = error_store
        self.name = name
        self.consumed = 0
        self.failed = 0
        self.publish_failures = 0
        self._ioloop: IOLoop | None = None  # set by start()
        self._consumers: dict[str, EventCallback] = {}
        # One thread writes the error store: entries land in the order the events failed in (the loop's shared
        # executor would race them), and a slow disk holds up no other work of the loop's executor.
        self._recorder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name} error store")

    def start(self) -> None:
        """Begin connecting and consuming; call from the running IOLoop's thread. Returns at once."""
        if self._ioloop is not None:
            return
        self._ioloop = IOLoop.current()
        self._connect()
        for queue, callback in self._consumers.items():
            self._start_consumer(queue, callback)

    def consume(self, queue: str, callback: EventCallback) -> None:
        """Call ``callback(event)`` for every event of ``queue``, from ``start()`` on (and on every reconnection)."""
        self._consumers[check_queue_name(queue)] = callback
        if self._ioloop is not None:
            self._start_consumer(queue, callback)

    def statistics(self) -> dict[str, Any]:
        """A plain record: the connection's state and the consumed and failed counts."""
        return {**self._connection_statistics(), "consumed": self.consumed, "failed": self.failed,
                "publish_failures": self.publish_failures}

    def _forget_consumers(self, queues: Iterable[str] | None) -> list[str]:
        """Take ``queues`` (all by default) out of those consumed from now on; their names."""
        names = list(self._consumers) if queues is None else list(queues)
        for name in names:
            self._consumers.pop(name, None)
        return names

    def _record(self, queue: str, **entry: Any) -> asyncio.Future[None]:
        """Count a failed event and write it to the error store (which logs it), off the loop and in order."""
        self.failed += 1
        assert self._ioloop is not None
        return self._ioloop.run_in_executor(self._recorder, partial(self.error_store.record, queue, **entry))

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Whether events can go out right now."""

    @abstractmethod
    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until connected (asyncio.TimeoutError after ``timeout`` s)."""

    @abstractmethod
    def publish(self, queue: str, event: Any) -> asyncio.Future[None]:
        """Publish one event; the Future resolves once the broker has it. Not JSON: EventEncodingError at once."""

    @abstractmethod
    def publish_nowait(self, queue: str, event: Any) -> None:
        """Publish without waiting for the broker; a failure is logged (and counted), not raised."""

    @abstractmethod
    async def stop_consuming(self, queues: Iterable[str] | None = None, timeout: float = 5.0) -> None:
        """Stop consuming ``queues`` (all by default) for good, then wait (up to ``timeout`` s) until every event
        handed out is acked; the rest stay queued for the next consumer."""

    @abstractmethod
    async def close(self, timeout: float = 5.0) -> None:
        """Stop consuming (see ``stop_consuming``), then let go of the broker."""

    @abstractmethod
    def _connect(self) -> None:
        """Begin connecting (``start()`` calls it, in the loop)."""

    @abstractmethod
    def _start_consumer(self, queue: str, callback: EventCallback) -> None:
        """Begin consuming ``queue`` (once started)."""

    @abstractmethod
    def _connection_statistics(self) -> dict[str, Any]:
        """The connection's part of ``statistics()``, with ``ready`` in it."""


class TornadoQueueClient(TornadoClient):
    """``TornadoClient`` over RabbitMQ. Publishes made while disconnected are held and sent once connected;
    after a reconnection, consuming resumes by itself."""

    def __init__(
        self,
        settings: Settings,
        *,
        prefetch: int | None = None,
        error_store: ErrorStore | None = None,
        name: str = "tornado",
    ) -> None:
        super().__init__(error_store or ErrorStore(settings.var_dir), name)
        self.settings = settings
        self.prefetch = prefetch or settings.prefetch
        self._client: AmqpClient | None = None
        self._ready_waiters: list[asyncio.Future[None]] = []
        self._in_flight = 0  # events handed to a callback and not yet acked
        self._drained: asyncio.Event | None = None  # set when _in_flight drops to 0 during close()

    @property
    def client(self) -> AmqpClient:
        if self._client is None:
            raise RuntimeError("TornadoQueueClient.start() was not called")
        return self._client

    def _connect(self) -> None:
        assert self._ioloop is not None
        self._client = AmqpClient(
            self.settings, self._ioloop, partial(FastTornadoConnection, custom_ioloop=self._ioloop),
            prefetch=self.prefetch, name=self.name, on_ready=self._on_ready, on_dead_letter=self._on_dead_letter,
        )
        self._client.start()

    @property
    def ready(self) -> bool:
        """Whether a channel is open right now."""
        return self._client is not None and self._client.ready

    async def wait_ready(self, timeout: float | None = None) -> None:
        if self.ready:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._ready_waiters.append(waiter)
        await asyncio.wait_for(waiter, timeout)

    def _on_ready(self) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def publish(self, queue: str, event: Any) -> asyncio.Future[None]:
        """Publish one event; the Future resolves once RabbitMQ confirmed it.

        An event that is not JSON raises EventEncodingError here, at once.
        """
        body = codec.encode(event)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_done(error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self.client.publish(check_queue_name(queue), body, on_done)
        return future

    def publish_nowait(self, queue: str, event: Any) -> None:
        """Publish without waiting for the confirm; a failure is logged (and counted), not raised.

        No future: thousands go out at once (the user_activity flush), and the confirm needs only a look.
        """
        self.client.publish(check_queue_name(queue), codec.encode(event), partial(self._published, queue))

    def _published(self, queue: str, error: BaseException | None) -> None:
        if error is not None:
            self.publish_failures += 1
            logger.error("%s: an event for %s was not published: %s", self.name, queue, error)

    def _start_consumer(self, queue: str, callback: EventCallback) -> None:
        self.client.add_consumer(queue, partial(self._on_message, queue, callback))

    def _on_message(self, queue: str, callback: EventCallback, generation: int, tag: int, body: bytes) -> None:
        """Invoked by the AMQP client, in the IOLoop, for each delivery."""
        ack = self._acker(generation, tag)
        try:
            event = codec.decode(body)
        except EventEncodingError as e:
            self._store_failure(queue, ack, raw=body, error=str(e))
            return
        try:
            result = callback(event)
        except Exception as e:
            error, trace = describe(e)
            self._store_failure(queue, ack, event=event, error=error, traceback=trace)
            return
        if result is None:
            self.consumed += 1
            ack()
            return
        future = asyncio.ensure_future(result)
        future.add_done_callback(partial(self._after_async_callback, queue, event, ack))

    def _on_dead_letter(self, queue: str, generation: int, tag: int, body: bytes) -> None:
        """Invoked by the AMQP client for an event RabbitMQ dead-lettered out of ``queue`` (see ``declarations``)."""
        ack = self._acker(generation, tag)
        try:
            self._store_failure(queue, ack, event=codec.decode(body), error=DEAD_LETTER_REASON)
        except EventEncodingError:
            self._store_failure(queue, ack, raw=body, error=DEAD_LETTER_REASON)

    def _acker(self, generation: int, tag: int) -> Callable[[], None]:
        """The one way to ack a delivery: it also counts the events in flight, which close() waits for."""
        self._in_flight += 1

        def ack() -> None:
            self._in_flight -= 1
            self.client.ack(generation, tag)
            if not self._in_flight and self._drained is not None:
                self._drained.set()

        return ack

    def _after_async_callback(self, queue: str, event: Any, ack: Callable[[], None],
                              future: asyncio.Future[None]) -> None:
        error = None if future.cancelled() else future.exception()
        if error is None and not future.cancelled():
            self.consumed += 1
            ack()
            return
        reason, trace = describe(error) if error is not None else ("cancelled", None)
        self._store_failure(queue, ack, event=event, error=reason, traceback=trace)

    def _store_failure(self, queue: str, ack: Callable[[], None], **entry: Any) -> None:
        """Write the error store, then ack: the event is kept before it is let go."""

        def on_recorded(f: asyncio.Future[None]) -> None:
            if f.exception() is not None:
                # Not acked: RabbitMQ keeps it and delivers it again after a reconnect.
                logger.error("%s: could not write the error store for %s: %s", self.name, queue, f.exception())
                return
            ack()

        asyncio.ensure_future(self._record(queue, **entry)).add_done_callback(on_recorded)

    async def stop_consuming(self, queues: Iterable[str] | None = None, timeout: float = 5.0) -> None:
        """Stop consuming ``queues`` (all by default) for good, then wait (up to ``timeout`` s) until every event
        handed out is acked.

        Once this starts, their callbacks are not called again: deliveries
        RabbitMQ sent before it saw the cancel, whether read from the socket
        already or not, go back to their queue for the next consumer (the
        next process). Call it before saving what the callbacks built.
        """
        names = self._forget_consumers(queues)
        if self._client is None:
            return
        cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._client.cancel_consumers(names, on_cancelled=partial(_resolve, cancelled))
        try:
            await asyncio.wait_for(cancelled, timeout)
        except TimeoutError:
            logger.warning("%s: RabbitMQ did not confirm the consumer cancels within %.0f s", self.name, timeout)
        await self._wait_drained(timeout)

    async def _wait_drained(self, timeout: float) -> None:
        if not self._in_flight:
            return
        self._drained = asyncio.Event()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            logger.warning("%s: %d event(s) handed out are not acked; RabbitMQ delivers them again",
                           self.name, self._in_flight)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop consuming (see ``stop_consuming``), let the events in flight be acked and the publishes made so far
        be confirmed (up to ``timeout`` s each), then close the connection."""
        if self._client is None:
            return
        await self.stop_consuming(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self._client.publishing and self._client.ready and time.monotonic() < deadline:
            await asyncio.sleep(CLOSE_POLL_SECONDS)
        if self._client.publishing:
            logger.warning("%s: closing with %d event(s) published but not confirmed", self.name,
                           self._client.publishing)
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._client.close(on_closed=partial(_resolve, closed))
        try:
            await asyncio.wait_for(closed, timeout)
        except TimeoutError:
            logger.warning("%s: connection did not close within %.0f s", self.name, timeout)

    def _connection_statistics(self) -> dict[str, Any]:
        return self.client.statistics() if self._client is not None else {"ready": False}


class MemoryTornadoClient(TornadoClient):
    """``TornadoClient`` over the in-process broker (EVENTBUS_BROKER=memory).

    Each consumed queue has a consumer thread on the memory broker that hands
    events to the IOLoop with ``add_callback`` and waits for the callback to
    finish before acking; a failing event goes to the error store.
    """

    def __init__(self, broker: MemoryBroker, name: str = "tornado") -> None:
        super().__init__(broker.error_store, name)
        self.broker = broker
        self._running: list[tuple[Consumer, threading.Thread]] = []

    @property
    def ready(self) -> bool:
        return self._ioloop is not None

    def _connect(self) -> None:
        pass  # nothing to connect to: the queues are in this process

    async def wait_ready(self, timeout: float | None = None) -> None:
        return None

    def publish(self, queue: str, event: Any) -> asyncio.Future[None]:
        self.broker.publish(queue, event)  # in memory: no I/O to wait for
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def publish_nowait(self, queue: str, event: Any) -> None:
        self.broker.publish(queue, event)  # in memory: nothing can fail later

    def _start_consumer(self, queue: str, callback: EventCallback) -> None:
        loop = self._ioloop
        assert loop is not None

        def handle(events: list[Any]) -> None:  # in the consumer thread
            for event in events:
                done = concurrent.futures.Future[None]()
                loop.add_callback(self._run_callback, queue, callback, event, done)
                done.result()

        consumer = self.broker.consumer(queue, handle)
        thread = threading.Thread(target=consumer.run, name=f"memory consumer {queue}", daemon=True)
        thread.start()
        self._running.append((consumer, thread))

    async def _run_callback(self, queue: str, callback: EventCallback, event: Any,
                            done: concurrent.futures.Future[None]) -> None:
        try:
            result = callback(event)
            if result is not None:
                await result
            self.consumed += 1
        except Exception as e:
            error, trace = describe(e)
            await self._record(queue, event=event, error=error, traceback=trace)
        finally:
            done.set_result(None)

    async def stop_consuming(self, queues: Iterable[str] | None = None, timeout: float = 5.0) -> None:
        """Stop the consumer threads of ``queues`` (all by default): an event being handled is finished and acked,
        the rest stay queued."""
        names = set(self._forget_consumers(queues))
        stopping = [(consumer, thread) for consumer, thread in self._running if consumer.queue in names]
        self._running = [running for running in self._running if running not in stopping]
        for consumer, _ in stopping:
            consumer.stop()
        for _, thread in stopping:
            await IOLoop.current().run_in_executor(None, thread.join, timeout)

    async def close(self, timeout: float = 5.0) -> None:
        await self.stop_consuming(timeout=timeout)

    def _connection_statistics(self) -> dict[str, Any]:
        return {"ready": self.ready, "consumers": sorted(self._consumers)}


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
