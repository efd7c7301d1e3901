"""Confirmed publishing for synchronous code: a Django view, a worker, a script.

A ``BlockingPublisher`` drives an ``AmqpClient`` on pika's select loop in the
calling thread, only while a publish waits for its confirms. A batch is
pipelined: every event is written, then the confirms are awaited together, so
a batch costs one round trip, not one per event. One publisher serves one
thread; ``RabbitMQBroker`` keeps one per thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial

from pika.adapters.select_connection import IOLoop

from eventbus.errors import BrokerUnreachable, PublishTimeout
from eventbus.queue.client import AmqpClient
from eventbus.queue.frames import FastSelectConnection
from eventbus.settings import Settings

logger = logging.getLogger(__name__)


class BlockingPublisher:
    """Publishes bodies to queues and returns once RabbitMQ confirmed them all."""

    def __init__(self, settings: Settings) -> None:
        self.timeout = settings.publish_timeout
        self._ioloop = IOLoop()
        self._ioloop.activate_poller()
        self._client = AmqpClient(
            settings, self._ioloop, partial(FastSelectConnection, custom_ioloop=self._ioloop),
            name="publisher",
        )
        self._client.start()

    def publish_many(self, queue: str, bodies: Sequence[bytes]) -> None:
        """Publish ``bodies`` to ``queue``, in order; return once all are confirmed.

        Raises BrokerUnreachable when no connection could be made within the
        publish timeout, and a PublishError when RabbitMQ refused an event (the
        others of the batch were still published).
        """
        self.publish_routed([(queue, body) for body in bodies])

    def publish_routed(self, routed: Sequence[tuple[str, bytes]]) -> None:
        """Publish each (queue, body), in order, confirms pipelined; as ``publish_many``, over several queues."""
        remaining = len(routed)
        errors: list[BaseException] = []

        def on_done(error: BaseException | None) -> None:
            nonlocal remaining
            remaining -= 1
            if error is not None:
                errors.append(error)

        pubs = [self._client.publish(queue, body, on_done) for queue, body in routed]
        if not self._run_until(lambda: remaining == 0, progress=lambda: remaining):
            self._client.abandon(pubs)
            raise self._timeout_error(", ".join(sorted({queue for queue, _ in routed})), remaining)
        if errors:
            raise errors[0]

    def _run_until(self, done: Callable[[], bool], timeout: float | None = None,
                   progress: Callable[[], object] | None = None) -> bool:
        """Run the loop until ``done()``; False once ``timeout`` s (default: the publish timeout) pass.

        With ``progress``, the timeout counts from the last change of ``progress()``:
        a big batch whose confirms keep coming never times out.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last = progress() if progress else None
        while not done():
            now = time.monotonic()
            if progress is not None and (current := progress()) != last:
                last, deadline = current, now + timeout
            if now >= deadline:
                return False
            wake = self._ioloop.call_later(deadline - now, lambda: None)  # poll() returns by the deadline
            self._ioloop.poll()
            self._ioloop.process_timeouts()
            self._ioloop.remove_timeout(wake)
        return True

    def _timeout_error(self, queue: str, remaining: int) -> BrokerUnreachable | PublishTimeout:
        client = self._client
        if not client.ready:
            return BrokerUnreachable(
                f"cannot reach RabbitMQ at {client.url} within {self.timeout:g} s "
                f"({remaining} event(s) for {queue!r} not published): {client.last_error}"
            )
        return PublishTimeout(
            f"RabbitMQ at {client.url} confirmed no publish to {queue!r} within {self.timeout:g} s"
        )

    def close(self) -> None:
        """Close the connection (waits a moment for RabbitMQ to agree)."""
        self._client.close()
        self._run_until(lambda: self._client.closed, timeout=2.0)
        self._ioloop.close()

__all__ = ["BlockingPublisher"]
