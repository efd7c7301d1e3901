"""Delayed delivery through RabbitMQ alone: delay queues that expire into their queue.

An event published to ``<queue>.delay.<ms>`` waits there ``ms`` milliseconds
(the delay queue's ``x-message-ttl``), then RabbitMQ dead-letters it into
``<queue>`` through the default exchange. Every event of a delay queue has the
same time to live, so they expire in order and none waits behind another.
"""

from __future__ import annotations

import re
from typing import Any

#: Name of a delay queue: the target queue, then the delay in milliseconds.
DELAY_QUEUE = re.compile(r"(?P<queue>.+)\.delay\.(?P<ms>\d+)")


def delay_queue_name(queue: str, delay: float) -> str:
    """The queue that holds events for ``delay`` seconds before they enter ``queue``."""
    return f"{queue}.delay.{max(1, round(delay * 1000))}"


def declare_arguments(queue: str) -> dict[str, Any] | None:
    """The arguments ``queue`` is declared with: a delay queue's TTL and target, else none."""
    match = DELAY_QUEUE.fullmatch(queue)
    if match is None:
        return None
    return {
        "x-message-ttl": int(match["ms"]),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": match["queue"],
    }
