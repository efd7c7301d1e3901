"""Each worker's stats file, ``<var>/queue_stats/<queue>.stats``, read by the monitoring checks.

The file is JSON: ``update_time``, ``recent_average_consume_time`` (seconds
per event over the last 50 events), ``queue_last_emptied_timestamp``,
``consumed_since_last_emptied``, ``processed``, ``failed`` and ``histogram``
(events per consume time bucket, for Prometheus). It is written
atomically (a temporary file renamed over it) when the queue runs empty, when
the worker wakes from idle, and at least every 30 s while it is busy.
"""

from __future__ import annotations

import bisect
import os
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from eventbus import codec
from eventbus.errors import EventEncodingError

#: Events the recent average consume time is taken over.
RECENT_EVENTS = 50
#: Longest a busy worker goes without writing its stats.
WRITE_INTERVAL = 30.0
#: Upper bounds (seconds) of the consume time histogram, as Prometheus buckets.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


def stats_path(var_dir: Path | str, queue: str, worker_num: int = 0) -> Path:
    """Worker 0 writes ``<queue>.stats``; further workers of the queue ``<queue>.<n>.stats``."""
    name = f"{queue}.stats" if worker_num == 0 else f"{queue}.{worker_num}.stats"
    return Path(var_dir) / "queue_stats" / name


def read_stats(var_dir: Path | str, queue: str) -> dict[str, Any] | None:
    """The stats of ``queue``'s first worker, or None if it never wrote any (or they are unreadable)."""
    try:
        stats = codec.decode(stats_path(var_dir, queue).read_bytes())
    except (OSError, EventEncodingError):
        return None
    return stats if isinstance(stats, dict) else None


class QueueStats:
    """What one worker has done, kept up to date in its stats file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.processed = 0
        self.failed = 0
        self.consumed_since_last_emptied = 0
        self.queue_last_emptied_timestamp: float | None = None
        self._recent: deque[float] = deque(maxlen=RECENT_EVENTS)
        self.histogram = [0] * (len(BUCKETS) + 1)  # per bucket, the last one for +Inf
        self.consume_seconds = 0.0
        self._last_write = 0.0
        self.idle = False

    @property
    def recent_average_consume_time(self) -> float | None:
        return sum(self._recent) / len(self._recent) if self._recent else None

    def woke(self) -> None:
        """Events arrived: if the worker was idle, write (the file shows it busy again)."""
        if self.idle:
            self.idle = False
            self.write()

    def record(self, events: int, seconds: float, failed: bool) -> None:
        """Count a batch of ``events`` that took ``seconds``; write if the last write is 30 s old."""
        per_event = seconds / events
        self._recent.extend([per_event] * min(events, RECENT_EVENTS))
        self.histogram[bisect.bisect_left(BUCKETS, per_event)] += events
        self.consume_seconds += seconds
        self.consumed_since_last_emptied += events
        if failed:
            self.failed += events
        else:
            self.processed += events
        if time.monotonic() - self._last_write >= WRITE_INTERVAL:
            self.write()

    def emptied(self) -> None:
        """The queue ran empty: note it and write."""
        self.idle = True
        self.queue_last_emptied_timestamp = time.time()
        self.consumed_since_last_emptied = 0
        self.write()

    def as_dict(self) -> dict[str, Any]:
        return {
            "update_time": time.time(),
            "recent_average_consume_time": self.recent_average_consume_time,
            "queue_last_emptied_timestamp": self.queue_last_emptied_timestamp,
            "consumed_since_last_emptied": self.consumed_since_last_emptied,
            "processed": self.processed,
            "failed": self.failed,
            "histogram": {"buckets": list(BUCKETS), "counts": self.histogram, "sum": self.consume_seconds},
        }

    def write(self) -> None:
        """Replace the stats file in one step: readers never see half of it."""
        if not self._last_write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(codec.encode(self.as_dict()))
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        self._last_write = time.monotonic()
