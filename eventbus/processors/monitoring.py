"""What operators and Nagios see of the queues: depth, consumers, stats, backlog, states.

Nagios conventions: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, and one line
of output. A queue is CRITICAL as stuck when its stats are older than 180 s
while it holds more than 10 events; otherwise its backlog (depth x recent
average consume time) is WARNING from ``backlog_warning`` seconds and
CRITICAL from ``backlog_critical`` (30 and 60 by default, per queue in
``@assign_queue``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from eventbus.errors import BrokerError
from eventbus.processors.registry import get_worker_class
from eventbus.processors.stats import read_stats
from eventbus.queue import Broker, QueueInfo

#: Stats older than this, with more than STUCK_DEPTH events waiting, mean the worker is stuck.
STUCK_AFTER = 180.0
STUCK_DEPTH = 10


class State(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class QueueReport:
    """One queue as monitoring sees it."""

    name: str
    depth: int
    consumers: int
    average_consume_time: float | None  # seconds per event, recent
    backlog_seconds: float | None
    stats_age: float | None  # seconds since the worker last wrote its stats
    errors: int  # events in the error store
    state: State
    reason: str
    #: The worker's stats file as read for this report (not part of the report itself).
    stats: dict[str, Any] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {**{k: v for k, v in self.__dict__.items() if k != "stats"}, "state": self.state.name}


def queue_reports(broker: Broker, queues: Sequence[str]) -> list[QueueReport]:
    """Reports on registered queues (raises BrokerError if RabbitMQ cannot be asked)."""
    now = time.time()
    return [_report(broker, info, now) for info in broker.queue_infos(queues)]


def _report(broker: Broker, info: QueueInfo, now: float) -> QueueReport:
    queue = info.name
    stats = read_stats(broker.settings.var_dir, queue) or {}
    average = stats.get("recent_average_consume_time")
    age = now - stats["update_time"] if "update_time" in stats else None
    backlog = info.depth * average if average is not None else None
    options = get_worker_class(queue).options
    state, reason = State.OK, ""
    if info.depth > STUCK_DEPTH and (age is None or age > STUCK_AFTER):
        state = State.CRITICAL
        seen = "no stats" if age is None else f"stats {age:.0f} s old"
        reason = f"{queue} stuck ({seen}, {info.depth} events waiting)"
    elif backlog is not None and backlog >= options.backlog_critical:
        state, reason = State.CRITICAL, f"{queue} backlog {backlog:.0f} s"
    elif backlog is not None and backlog >= options.backlog_warning:
        state, reason = State.WARNING, f"{queue} backlog {backlog:.0f} s"
    return QueueReport(queue, info.depth, info.consumers, average, backlog, age,
                       broker.error_store.count(queue), state, reason, stats)


def check_queue(broker: Broker, queues: Sequence[str]) -> tuple[State, str]:
    """The Nagios state of the queues and its one line."""
    try:
        reports = queue_reports(broker, queues)
    except BrokerError as e:
        return State.CRITICAL, f"CRITICAL: cannot read queue depths: {e}"
    worst = max((r.state for r in reports), default=State.OK)
    if worst is State.OK:
        return worst, f"OK: {len(reports)} queues, none behind"
    problems = "; ".join(f"{r.state.name} {r.reason}" for r in reports if r.state is not State.OK)
    return worst, f"{worst.name}: {problems}"


def check_consumers(broker: Broker, queues: Sequence[str]) -> tuple[State, str]:
    """CRITICAL unless every queue has at least one consumer."""
    try:
        without = [info.name for info in broker.queue_infos(queues) if info.consumers < 1]
    except BrokerError as e:
        return State.CRITICAL, f"CRITICAL: cannot count consumers: {e}"
    if without:
        return State.CRITICAL, f"CRITICAL: no consumer for {len(without)} queue(s): {', '.join(without)}"
    return State.OK, f"OK: all {len(queues)} queues have consumers"
