"""Processors for testing and benchmarking the framework itself."""

from __future__ import annotations

import time
from typing import Any

from eventbus import codec
from eventbus.contracts import NOOP, NOOP_BATCH, TEST
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import Event, LoopQueueProcessingWorker, QueueProcessingWorker


@assign_queue(TEST, retry_delay=0.2)
class TestWorker(QueueProcessingWorker):
    """Appends each event as a JSON line to ``EVENTBUS_TEST_QUEUE_FILE``.

    An event with ``"raise": true`` raises; one with ``"sleep": S`` works for S seconds first.
    """

    def consume(self, event: Event) -> None:
        if event.get("sleep"):
            time.sleep(float(event["sleep"]))
        if event.get("raise"):
            raise ValueError(f"asked to raise by event {event.get('id', '')}".strip())
        path = self.broker.settings.test_queue_file
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(codec.encode(event) + b"\n")


@assign_queue(NOOP)
class NoopWorker(QueueProcessingWorker):
    """Does nothing: measures the framework's cost per event."""

    def consume(self, event: Event) -> None:
        pass


@assign_queue(NOOP_BATCH)
class NoopBatchWorker(LoopQueueProcessingWorker):
    """Does nothing, in batches: measures the framework's cost per batch."""

    def consume_batch(self, events: list[Any]) -> None:
        pass
