"""The consume loop that synchronous workers run, whatever the broker.

``Consumer.run()`` takes batches of deliveries, decodes them and calls the
callback with the list of events, in the caller's thread. After the callback
returns, the batch is acked (one ack, ``multiple``); if it raises anything,
BaseException included, the batch is nacked with requeue and the exception
propagates out of ``run()``. A body that is not JSON never reaches the
callback: it goes to the error store and is acked.

Batching: a batch holds at most ``batch_size`` events. With ``timeout=None``
a batch is what is there already (at least one event, no waiting); with a
timeout, the consumer waits up to that many seconds for the batch to fill.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, NamedTuple

from eventbus import codec
from eventbus.contracts import check_queue_name
from eventbus.errors import EventEncodingError
from eventbus.queue.error_store import ErrorStore

logger = logging.getLogger(__name__)

#: Seconds without a delivery after which the queue counts as emptied (``on_idle``).
IDLE_AFTER = 0.05
#: The callback gets a list of decoded events (one, for batch_size=1).
BatchCallback = Callable[[list[Any]], None]


class Delivery(NamedTuple):
    """One message as the broker handed it over (a tuple: one is made per delivery, half the cost of a
    frozen dataclass)."""

    generation: int  # the channel it came on; an ack on a later channel would be wrong
    tag: int
    body: bytes


class Consumer(ABC):
    """A blocking consume loop; see the module docstring. Subclasses bring the broker."""

    def __init__(
        self,
        queue: str,
        callback: BatchCallback,
        *,
        batch_size: int = 1,
        timeout: float | None = None,
        error_store: ErrorStore,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.queue = check_queue_name(queue)
        self.callback = callback
        self.batch_size = batch_size
        self.timeout = timeout
        self.error_store = error_store
        self.on_idle = on_idle
        self._stopping = False

    def run(self) -> None:
        """Consume until ``stop()``; the batch in hand when it is called is finished and acked first.

        A consumer stopped before ``run()`` returns at once, without connecting.
        """
        if self._stopping:
            return
        self._open()
        try:
            while not self._stopping:
                batch = self._next_batch()
                if batch:
                    self._handle(batch)
        finally:
            self._close()

    def stop(self) -> None:
        """Ask ``run()`` to return after the current batch. Safe from any thread and from signal handlers."""
        self._stopping = True
        self._wake()

    def _next_batch(self) -> list[Delivery]:
        first = self._get(0)
        if first is None and not self._stopping:
            first = self._get(IDLE_AFTER)  # a queue that refills at once is busy, not idle
        if first is None:
            # A stop() may have been used up by a _get: look before waiting for good.
            if self._stopping:
                return []
            if self.on_idle is not None:
                self.on_idle()
            first = None if self._stopping else self._get(None)
            if first is None:
                return []
        batch = [first]
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while len(batch) < self.batch_size and not self._stopping:
            wait = 0.0 if deadline is None else max(0.0, deadline - time.monotonic())
            delivery = self._get(wait)
            if delivery is None:
                break
            batch.append(delivery)
        return batch

    def _handle(self, batch: list[Delivery]) -> None:
        events, decoded = [], []
        for delivery in batch:
            try:
                events.append(codec.decode(delivery.body))
                decoded.append(delivery)
            except EventEncodingError as e:
                self._undecodable(delivery, e)  # acked on its own: never acked twice below
        if not decoded:
            return
        last = decoded[-1]
        try:
            self.callback(events)
        except BaseException:
            self._settle(last, ack=False, multiple=True)
            raise
        self._settle(last, ack=True, multiple=True)

    def _undecodable(self, delivery: Delivery, error: EventEncodingError) -> None:
        self.error_store.record(self.queue, raw=delivery.body, error=str(error), tries=0)
        self._settle(delivery, ack=True, multiple=False)

    @abstractmethod
    def _open(self) -> None:
        """Start receiving deliveries."""

    @abstractmethod
    def _close(self) -> None:
        """Stop receiving; deliveries not settled go back to the queue."""

    @abstractmethod
    def _get(self, timeout: float | None) -> Delivery | None:
        """The next delivery, waiting up to ``timeout`` s (None: until one comes or ``_wake()``)."""

    @abstractmethod
    def _wake(self) -> None:
        """Make a waiting ``_get`` return None at once; must be safe in a signal handler."""

    @abstractmethod
    def _settle(self, delivery: Delivery, *, ack: bool, multiple: bool) -> None:
        """Ack, or nack with requeue, ``delivery`` (and, with ``multiple``, every earlier one)."""
