"""The in-process broker: RabbitMQ's semantics, without RabbitMQ.

Queues are deques in this process. Delivery, acks, nacks with requeue and
"unacked events go back when their consumer closes" behave as with RabbitMQ,
so code tested here behaves the same there. ``join(queue)`` waits until a
queue is drained: tests wait on it, never on sleeps.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from eventbus import codec
from eventbus.contracts import check_queue_name
from eventbus.queue.broker import Broker, QueueInfo
from eventbus.queue.consumer import BatchCallback, Consumer, Delivery
from eventbus.queue.tornado_client import MemoryTornadoClient, TornadoClient
from eventbus.settings import Settings


class _MemoryQueue:
    def __init__(self) -> None:
        # Condition() uses an RLock: stop() may run in a signal handler of a thread that holds it.
        self.cond = threading.Condition()
        self.ready: deque[tuple[int, bytes]] = deque()
        self.unacked = 0
        self.delayed = 0  # published with a delay, not yet in the queue
        self.consumers = 0


class MemoryBroker(Broker):
    """Queues in this process; see the module docstring."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings or Settings(broker="memory"))
        self._queues: dict[str, _MemoryQueue] = {}
        self._lock = threading.Lock()
        self._tags = itertools.count(1)

    def _queue(self, name: str) -> _MemoryQueue:
        with self._lock:
            queue = self._queues.get(name)
            if queue is None:
                queue = self._queues[check_queue_name(name)] = _MemoryQueue()
            return queue

    def publish_bodies(self, queue: str, bodies: list[bytes]) -> None:
        q = self._queue(queue)
        with q.cond:
            q.ready.extend((next(self._tags), body) for body in bodies)
            q.cond.notify_all()

    def publish_later(self, queue: str, events: Iterable[Any], delay: float) -> None:
        bodies = [codec.encode(event) for event in events]
        q = self._queue(queue)
        with q.cond:
            q.delayed += len(bodies)
        timer = threading.Timer(delay, self._release, (queue, bodies))
        timer.daemon = True
        timer.start()

    def _release(self, queue: str, bodies: list[bytes]) -> None:
        q = self._queue(queue)
        with q.cond:  # one step, so join() never sees the events in neither place
            q.delayed -= len(bodies)
            self.publish_bodies(queue, bodies)

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
        return MemoryConsumer(self._queue(queue), queue, callback, batch_size=batch_size, timeout=timeout,
                              error_store=self.error_store, on_idle=on_idle)

    def tornado_client(self, name: str = "tornado") -> TornadoClient:
        return MemoryTornadoClient(self, name=name)

    def join(self, queue: str, timeout: float | None = None) -> None:
        """Wait until ``queue`` has no event left, delivered, delayed or not; TimeoutError after ``timeout`` s."""
        q = self._queue(queue)
        with q.cond:
            if not q.cond.wait_for(lambda: not (q.ready or q.unacked or q.delayed), timeout):
                raise TimeoutError(f"queue {queue!r} still holds {len(q.ready) + q.unacked + q.delayed} event(s)")

    def purge(self, queue: str) -> int:
        q = self._queue(queue)
        with q.cond:
            count = len(q.ready)
            q.ready.clear()
            q.cond.notify_all()
            return count

    def queue_info(self, queue: str) -> QueueInfo:
        with self._lock:
            q = self._queues.get(check_queue_name(queue))
        if q is None:
            return QueueInfo(queue, exists=False, depth=0, consumers=0)
        with q.cond:
            return QueueInfo(queue, exists=True, depth=len(q.ready), consumers=q.consumers)

    def delete_queue(self, queue: str) -> None:
        with self._lock:
            self._queues.pop(check_queue_name(queue), None)


class MemoryConsumer(Consumer):
    """A consumer of one in-process queue."""

    def __init__(self, queue: _MemoryQueue, name: str, callback: BatchCallback, **options: object) -> None:
        super().__init__(name, callback, **options)  # type: ignore[arg-type]
        self._q = queue
        self._delivered: OrderedDict[int, bytes] = OrderedDict()
        self._woken = False

    def _open(self) -> None:
        with self._q.cond:
            self._q.consumers += 1

    def _close(self) -> None:
        with self._q.cond:
            self._q.consumers -= 1
            self._requeue(list(self._delivered))

    def _get(self, timeout: float | None) -> Delivery | None:
        q = self._q
        with q.cond:
            if not q.cond.wait_for(lambda: q.ready or self._woken, timeout) or self._woken:
                self._woken = False
                return None
            tag, body = q.ready.popleft()
            q.unacked += 1
            self._delivered[tag] = body
            return Delivery(0, tag, body)

    def _wake(self) -> None:
        with self._q.cond:
            self._woken = True
            self._q.cond.notify_all()

    def _settle(self, delivery: Delivery, *, ack: bool, multiple: bool) -> None:
        tags = self._up_to(delivery.tag) if multiple else [delivery.tag]
        with self._q.cond:
            if ack:
                for tag in tags:
                    del self._delivered[tag]
                self._q.unacked -= len(tags)
            else:
                self._requeue(tags)
            self._q.cond.notify_all()

    def _up_to(self, tag: int) -> list[int]:
        """Tags delivered to this consumer up to and including ``tag``, in delivery order."""
        tags = []
        for delivered in self._delivered:
            tags.append(delivered)
            if delivered == tag:
                break
        return tags

    def _requeue(self, tags: list[int]) -> None:
        """Put delivered events back at the head of the queue, in their order (caller holds the lock)."""
        self._q.ready.extendleft((tag, self._delivered.pop(tag)) for tag in reversed(tags))
        self._q.unacked -= len(tags)
