"""Processors that only the tests use; workers load them through EVENTBUS_PROCESSOR_MODULES=tests.processors."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from eventbus import codec
from eventbus.processors.registry import assign_queue
from eventbus.processors.worker import (
    Event,
    LoopQueueProcessingWorker,
    PermanentError,
    QueueProcessingWorker,
    Worker,
)


def record(worker: Worker, name: str, entry: Any) -> None:
    """Append ``entry`` as a JSON line to ``<var>/<name>.jsonl``."""
    path = Path(worker.broker.settings.var_dir) / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(codec.encode(entry) + b"\n")


class CrashOnRequest(Worker):
    def before_start(self) -> None:
        if os.environ.get("EVENTBUS_TEST_CRASH") == self.queue_name:
            raise ValueError(f"{self.queue_name} asked to crash")  # not a usage error, though a ValueError


@assign_queue("test_batch", batch_size=10, batch_wait=0.3, retry_delay=0.1, tries=2)
class BatchRecorder(CrashOnRequest, LoopQueueProcessingWorker):
    """Records each batch; an event with ``"hold": S`` makes worker ``hold_on`` (default 0) work S seconds."""

    def consume_batch(self, events: list[Event]) -> None:
        record(self, "test_batch_started", {"worker": self.worker_num, "ids": [e["id"] for e in events]})
        holds = [e["hold"] for e in events if "hold" in e and e.get("hold_on", 0) == self.worker_num]
        if holds:
            time.sleep(max(holds))
        if any(e.get("raise") for e in events):
            raise RuntimeError("a batch event asked to raise")
        record(self, "test_batch", {"worker": self.worker_num, "ids": [e["id"] for e in events]})


@assign_queue("test_flaky", retry_delay=0.1, tries=3)
class FlakyRecorder(CrashOnRequest, QueueProcessingWorker):
    """Fails while ``<var>/flaky_broken`` exists."""

    def consume(self, event: Event) -> None:
        if (Path(self.broker.settings.var_dir) / "flaky_broken").exists():
            raise ConnectionError("downstream service is down")
        record(self, "test_flaky", event)


@assign_queue("test_slow", timeout=0.5, tries=1)
class SlowRecorder(CrashOnRequest, QueueProcessingWorker):
    """Works ``"sleep"`` seconds per event, with a 0.5 s limit."""

    def consume(self, event: Event) -> None:
        time.sleep(event.get("sleep", 0))
        record(self, "test_slow", event)


@assign_queue("test_async", timeout=0.5, tries=1)
class AsyncRecorder(CrashOnRequest, QueueProcessingWorker):
    """An asyncio processor: awaits ``"sleep"`` seconds per event, with a 0.5 s limit."""

    async def consume(self, event: Event) -> None:
        await asyncio.sleep(event.get("sleep", 0))
        record(self, "test_async", event)


@assign_queue("test_partial", batch_size=10, batch_wait=0.3, retry_delay=0.1, tries=1)
class PartialBatch(CrashOnRequest, LoopQueueProcessingWorker):
    """Fails the events with ``"bad": true`` itself, then raises when an event has ``"raise": true``."""

    def consume_batch(self, events: list[Event]) -> None:
        self.fail([e for e in events if e.get("bad")], PermanentError("a bad event"))
        if any(e.get("raise") for e in events):
            raise RuntimeError("the rest of the batch failed")


@assign_queue("test_poison", enabled=False)
class PoisonRecorder(QueueProcessingWorker):
    """Records each event; one with ``"poison": true`` kills its worker process on the spot, as a segfault or the
    OOM killer would: nothing is acked, nothing is retried. Not in ``--all``: only test_cluster runs it."""

    def consume(self, event: Event) -> None:
        if event.get("poison"):
            os._exit(70)
        record(self, "test_poison", event)
