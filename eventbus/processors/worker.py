"""The two kinds of queue worker, and what they share.

``QueueProcessingWorker.consume(event)`` processes one event at a time;
``LoopQueueProcessingWorker.consume_batch(events)`` processes batches (up to
``batch_size`` events, waiting up to ``batch_wait`` seconds for one to fill).
Either may be a coroutine function: it then runs on the worker's own asyncio
loop.

Both give each event the same guarantees:

- it is acked only after processing succeeded (at-least-once);
- when processing raises or times out, it is published again with its
  ``failed_tries`` count, after a delay that doubles with each try, through a
  delay queue, so the events behind it are not held up; after the last try it
  goes to the error store with the error and traceback;
- an event that is not a JSON object, or whose processing raises
  ``PermanentError`` (a ``ContractError`` among them: the event breaks its
  queue's contract), goes to the error store at once;
- while the database cannot be reached (``database.is_unavailable``: its
  server stopped or restarting), the batch waits for it and is processed
  again, in place and in order, for up to ``DATABASE_WAIT_SECONDS``: an
  outage is no fault of the events and uses none of their tries. Only an
  outage longer than that fails the batch as any error does.

``failed_tries`` is therefore a reserved key of events (as in Zulip). A batch
processor that finished part of a batch calls ``fail(events, error)`` for the
events that failed and returns normally: only those are retried.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, TypeVar

from eventbus.contracts import FAILED_TRIES
from eventbus.database import is_unavailable
from eventbus.errors import ContractError, PermanentError
from eventbus.processors.registry import QueueOptions
from eventbus.processors.stats import QueueStats, stats_path
from eventbus.processors.timeouts import ProcessingTimeout, deadline, run_coroutine
from eventbus.queue import Broker, Consumer
from eventbus.queue.error_store import describe, encoding_problem

logger = logging.getLogger(__name__)

Event = dict[str, Any]
#: What a queue's contract reads from an event.
C = TypeVar("C")
#: How long a batch waits for an unavailable database before it fails (and is retried, up to its queue's tries):
#: longer than a restart or a failover of the server takes, short enough that an outage is not hidden for long.
DATABASE_WAIT_SECONDS = 60.0
#: The first wait between tries of a batch while the database is unavailable; each further one doubles, up to
#: the last (the database is tried again soon after it is back, without a storm of connection attempts).
DATABASE_RETRY_FIRST, DATABASE_RETRY_LAST = 0.1, 2.0


class Worker(ABC):
    """Base of both worker kinds; subclass one of them, not this."""

    #: Set by @assign_queue: the queue, and its options (a worker may be given others, see ``__init__``).
    queue_name: ClassVar[str] = ""
    options: QueueOptions = QueueOptions()

    def __init__(self, broker: Broker, worker_num: int = 0, *, options: QueueOptions | None = None) -> None:
        self.broker = broker
        self.worker_num = worker_num
        if options is not None:
            self.options = options
        self.error_store = self.broker.error_store
        self.stats = QueueStats(stats_path(self.broker.settings.var_dir, self.queue_name, worker_num))
        self._consumer: Consumer | None = None
        self._stop_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed: set[int] = set()  # ids of the events fail() took during the attempt in progress

    # -- hooks ----------------------------------------------------------------------

    def before_start(self) -> None:
        """Runs before consuming starts (open connections, load data). If it raises, the worker does not start."""

    def after_stop(self) -> None:
        """Runs after consuming stopped; an error here is logged, not raised."""

    # -- running --------------------------------------------------------------------

    def start(self) -> None:
        """Consume until ``stop()``; the batch in hand then is finished and acked before this returns."""
        self.before_start()
        self._consumer = self.broker.consumer(
            self.queue_name, self._on_batch, batch_size=self._batch_size(), timeout=self._batch_wait(),
            on_idle=self.stats.emptied,
        )
        if self._stop_requested:  # stop() came while starting: do not consume at all
            self._consumer.stop()
        try:
            self._consumer.run()
        finally:
            try:
                self.after_stop()
            except Exception:
                logger.exception("queue %s: after_stop failed", self.queue_name)
            if self._loop is not None:
                self._loop.close()
                self._loop = None

    def stop(self) -> None:
        """Ask the worker to finish its batch and return from ``start()``; safe in a signal handler.

        Asked before ``start()`` got going, it makes ``start()`` return without consuming.
        """
        self._stop_requested = True
        if self._consumer is not None:
            self._consumer.stop()

    def _batch_size(self) -> int:
        return 1

    def _batch_wait(self) -> float | None:
        return None

    # -- processing -----------------------------------------------------------------

    def _on_batch(self, events: list[Any]) -> None:
        """Called by the consumer with decoded events; returning acks them all."""
        self.stats.woke()
        objects = []
        for event in events:
            if isinstance(event, dict):
                objects.append(event)
            else:
                self.error_store.record(self.queue_name, event, error="event is not a JSON object", tries=0)
        if objects:
            self._process(objects)

    @abstractmethod
    def _process(self, events: list[Event]) -> None:
        """Process the events of one batch, each through ``_attempt``."""

    def _attempt(self, events: list[Event], work: Callable[[], Any]) -> None:
        """Run ``work`` for ``events`` under the time limit; a failure retries or stores them."""
        started = time.monotonic()
        failed = False
        self._failed.clear()
        try:
            self._run_waiting_for_database(events, work)
        except (Exception, ProcessingTimeout) as error:
            failed = True
            # Events the processor already failed on its own are retried or stored once, not again here.
            self.fail([event for event in events if id(event) not in self._failed], error)
        self.stats.record(len(events), time.monotonic() - started, failed)

    def _run_waiting_for_database(self, events: list[Event], work: Callable[[], Any]) -> None:
        """``work()`` under the time limit; while it fails because the database is unavailable, again after a
        growing wait, for up to ``DATABASE_WAIT_SECONDS`` (or until ``stop()``), with the events not failed yet."""
        give_up = time.monotonic() + DATABASE_WAIT_SECONDS
        wait = DATABASE_RETRY_FIRST
        while True:
            limit = None if self.options.timeout is None else self.options.timeout * len(events)
            try:
                if self._is_async():
                    run_coroutine(self._event_loop(), work(), limit)
                else:
                    with deadline(limit):
                        work()
                return
            except Exception as error:
                if not is_unavailable(error) or time.monotonic() + wait > give_up or not self._sleep(wait):
                    raise
            # Events the processor failed on its own (a broken contract) were retried or stored already: not
            # again. ``work`` holds this very list.
            events[:] = [event for event in events if id(event) not in self._failed]
            if not events:
                return
            if wait == DATABASE_RETRY_FIRST:
                logger.warning("queue %s: the database is unavailable; %d event(s) wait for it", self.queue_name,
                               len(events))
            wait = min(2 * wait, DATABASE_RETRY_LAST)

    def _sleep(self, seconds: float) -> bool:
        """Sleep, in slices so that ``stop()`` (from a signal handler) is heard; False if it came."""
        end = time.monotonic() + seconds
        while not self._stop_requested and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return not self._stop_requested

    @abstractmethod
    def _is_async(self) -> bool:
        """Whether the processing method is a coroutine function."""

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def fail(self, events: list[Event], error: BaseException) -> None:
        """Retry ``events`` later (or store them, after their last try) because of ``error``.

        The framework calls it when processing raises; a batch processor that
        finished part of a batch calls it for the events that failed, and returns.
        It cannot fail on what an event holds: one that cannot be published
        again (NaN, a lone surrogate) goes to the error store at once. Only the
        broker or the disk failing makes it raise, and then the batch is not acked.
        """
        description, trace = describe(error)
        retries: dict[float, list[Event]] = {}
        permanent = isinstance(error, PermanentError)
        self._failed.update(map(id, events))
        for event in events:
            tries = min(failed_tries(event), self.options.tries) + 1
            if tries >= self.options.tries or permanent:
                self._store(event, description, tries, trace)
            else:
                delay = self.options.retry_delay * 2 ** (tries - 1)
                retries.setdefault(delay, []).append({**event, FAILED_TRIES: tries})
        for delay, batch in retries.items():
            logger.warning("queue %s: %d event(s) failed (%s); retrying in %g s",
                           self.queue_name, len(batch), description, delay)
            self._retry(batch, delay, description, trace)

    def _retry(self, batch: list[Event], delay: float, description: str, trace: str) -> None:
        """Publish ``batch`` to come back after ``delay``; an event the encoder refuses is stored instead."""
        sendable = []
        for event in batch:
            problem = encoding_problem(event)
            if problem is None:
                sendable.append(event)
            else:
                self._store(event, f"{description} (cannot be retried: {problem})", event[FAILED_TRIES], trace)
        if sendable:
            self.broker.publish_later(self.queue_name, sendable, delay)

    def _store(self, event: Event, description: str, tries: int, trace: str) -> None:
        original = {k: v for k, v in event.items() if k != FAILED_TRIES}
        self.error_store.record(self.queue_name, original, error=description, tries=tries, traceback=trace)


#: A ``failed_tries`` beyond this is clamped to it (any count past a queue's ``tries`` means the same).
MAX_FAILED_TRIES = 1_000_000


def failed_tries(event: Event) -> int:
    """The count of failed tries ``event`` carries: 0 without one, or with something that is no count."""
    value = event.get(FAILED_TRIES, 0)
    # A producer may put anything there (a string, NaN, a bool, a negative number): none may stop the failure
    # from being recorded, nor earn the event extra tries.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return 0
    return int(min(value, MAX_FAILED_TRIES))


class QueueProcessingWorker(Worker):
    """Processes one event at a time: override ``consume(event)``."""

    @abstractmethod
    def consume(self, event: Event) -> Any:
        """Process one event (a JSON object); may be ``async def``."""

    def _is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.consume)

    def _process(self, events: list[Event]) -> None:
        for event in events:
            self._attempt([event], partial(self.consume, event))


class LoopQueueProcessingWorker(Worker):
    """Processes batches: override ``consume_batch(events)``."""

    @abstractmethod
    def consume_batch(self, events: list[Event]) -> Any:
        """Process up to ``batch_size`` events; may be ``async def``."""

    def _is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.consume_batch)

    def _batch_size(self) -> int:
        return self.options.batch_size

    def _batch_wait(self) -> float | None:
        return self.options.batch_wait

    def _process(self, events: list[Event]) -> None:
        self._attempt(events, partial(self.consume_batch, events))

    def parse(self, events: list[Event], contract: Callable[[Event], C]) -> list[tuple[Event, C]]:
        """Each event with what ``contract`` (a ``from_event``) reads from it; an event that breaks the contract
        goes to the error store at once, and the rest of the batch is processed."""
        parsed = []
        for event in events:
            try:
                parsed.append((event, contract(event)))
            except ContractError as error:
                self.fail([event], error)  # not failed again if the batch fails later
        return parsed
