"""The queue dashboard's numbers: every queue and the Tornado server, sampled, with a short history.

A sample is taken when a dashboard asks and the last one is older than
``MIN_INTERVAL`` (every open dashboard shares it), so nothing runs while
nobody watches. Rates are differences between samples: a queue's consume
rate from its worker's stats file (``processed + failed`` over the stats'
``update_time``, but over no less than the time between the samples that saw
them: a worker writes its stats when it wakes and again when the queue runs
empty, and one event between two writes a millisecond apart is no rate of a
thousand a second), Tornado's events per second from ``events_delivered``.
Reading the broker, the stats and the error store is blocking I/O: it runs in
the IOLoop's executor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tornado.ioloop import IOLoop

from eventbus.errors import BrokerError
from eventbus.processors.monitoring import QueueReport, State, queue_reports
from eventbus.processors.registry import registered_queues
from eventbus.processors.stats import WRITE_INTERVAL
from eventbus.queue import Broker, QueueInfo
from eventbus.settings import Settings
from eventbus.users import User

if TYPE_CHECKING:
    from eventbus.tornado_events.server import EventServer

logger = logging.getLogger(__name__)

#: Dashboards poll every 2 s; a sample younger than this is shared rather than taken again.
MIN_INTERVAL = 1.5
#: Samples kept for the charts: five minutes at one sample each 2 s.
HISTORY = 150
#: A worker busy for this long writes its stats at least once: older stats mean it consumed nothing since.
IDLE_AFTER = WRITE_INTERVAL + 5.0


def may_watch_queues(settings: Settings, user: User) -> bool:
    """Who may see the dashboard: anyone logged in during development, the administrators in production
    (queue names, depths and error counts say much about a deployment and its load)."""
    return settings.development or settings.is_admin(user.email)


@dataclass
class _Counter:
    """The last reading of a growing count (taken ``at``, first seen ``seen``), to turn the next into a rate."""

    count: float
    at: float
    seen: float
    rate: float | None = None

    def update(self, count: float, at: float, seen: float) -> float | None:
        if at > self.at:
            # A count that went down was reset (the worker restarted): everything counted since is new.
            delta = count - self.count if count >= self.count else count
            self.rate = delta / max(at - self.at, seen - self.seen)
            self.count, self.at, self.seen = count, at, seen
        return self.rate


class QueueDashboard:
    """Samples for the dashboard; see the module docstring. Use from the IOLoop only."""

    def __init__(self, server: EventServer, broker: Broker,
                 queues: Callable[[], Sequence[str]] = registered_queues) -> None:
        self.server = server
        self.broker = broker
        self.queues = queues
        self._consumed: dict[str, _Counter] = {}
        self._delivered: _Counter | None = None
        self._history: dict[str, deque[list[Any]]] = {}
        self._tornado_history: deque[list[Any]] = deque(maxlen=HISTORY)
        self._last: dict[str, Any] | None = None
        self._last_at = 0.0
        self._sampling: asyncio.Future[dict[str, Any]] | None = None

    async def snapshot(self) -> dict[str, Any]:
        """The latest sample, taken now unless a recent one exists or one is being taken."""
        if self._last is not None and time.monotonic() - self._last_at < MIN_INTERVAL:
            return self._last
        if self._sampling is None:
            self._sampling = asyncio.ensure_future(self._sample())
            self._sampling.add_done_callback(self._sampled)
        return await asyncio.shield(self._sampling)

    def _sampled(self, future: asyncio.Future[dict[str, Any]]) -> None:
        self._sampling = None
        if not future.cancelled() and future.exception() is None:
            self._last, self._last_at = future.result(), time.monotonic()

    async def _sample(self) -> dict[str, Any]:
        now = time.time()
        reports, tornado_queues, broker_error = await IOLoop.current().run_in_executor(None, self._read)
        queues = sorted((self._queue(report, now) for report in reports), key=_urgency)
        return {"time": now, "queues": queues, "tornado": self._tornado(tornado_queues, now),
                "broker_error": broker_error}

    def _read(self) -> tuple[list[QueueReport], list[QueueInfo], str | None]:
        """Everything blocking, in one executor call: the reports (with the worker stats), Tornado's own queues."""
        names = list(self.queues())
        settings = self.server.settings
        try:
            reports = queue_reports(self.broker, names)
            tornado_queues = self.broker.queue_infos([settings.notify_queue, settings.return_queue])
        except BrokerError as e:
            logger.warning("queue dashboard: cannot read the queues: %s", e)
            return [], [], str(e)
        return reports, tornado_queues, None

    def _queue(self, report: QueueReport, now: float) -> dict[str, Any]:
        stats = report.stats
        processed, failed = int(stats.get("processed", 0)), int(stats.get("failed", 0))
        rate = None
        if "update_time" in stats:
            consumed, at = processed + failed, stats["update_time"]
            counter = self._consumed.setdefault(report.name, _Counter(consumed, at, now))
            rate = counter.update(consumed, at, now)
            if report.stats_age is not None and report.stats_age > IDLE_AFTER:
                rate = 0.0
        history = self._history.setdefault(report.name, deque(maxlen=HISTORY))
        history.append([round(now, 3), report.depth, rate])
        return {**report.as_dict(), "processed": processed, "failed": failed, "consume_rate": rate,
                "history": list(history)}

    def _tornado(self, queues: list[QueueInfo], now: float) -> dict[str, Any]:
        stats = self.server.statistics()
        monotonic = time.monotonic()
        if self._delivered is None:
            self._delivered = _Counter(stats["events_delivered"], monotonic, monotonic)
        events_per_second = self._delivered.update(stats["events_delivered"], monotonic, monotonic)
        connected = stats["sockets"] + stats["long_polls"]
        self._tornado_history.append([round(now, 3), events_per_second, connected])
        return {
            "server_id": self.server.settings.server_id, "uptime": now - self.server.started,
            "connected_clients": connected, "websockets": stats["sockets"], "long_polls": stats["long_polls"],
            "live_queues": stats["clients"], "events_delivered": stats["events_delivered"],
            "events_per_second": events_per_second, "pending_requests": stats["pending_requests"],
            "slow_consumers_closed": stats["slow_consumers_closed"],
            "queues": [{"name": q.name, "depth": q.depth, "consumers": q.consumers} for q in queues],
            "history": list(self._tornado_history),
        }


def _urgency(queue: dict[str, Any]) -> tuple[int, float, int, str]:
    """Worst first: by Nagios state, then backlog, then depth."""
    return (-State[queue["state"]].value, -(queue["backlog_seconds"] or 0.0), -queue["depth"], queue["name"])
